"""`python -m tensorsim.report DIR`: the phase diagram over (k, p) of the runs under DIR, and its figures.
The command lives here; the work in tensorsim/analysis/report.py."""
import sys

from .analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
