"""`python -m tensorsim.analyze FILES`: silos, stability and entropy of transcripts written by other tools.
The command lives here; the work in tensorsim/analysis/analyze.py."""
import sys

from .analysis.analyze import main

if __name__ == "__main__":
    sys.exit(main())
