"""`python -m tensorsim.report DIR [--axes X,Y]`: the phase diagram over the swept keys of the runs under DIR.
The command lives here; the work in tensorsim/analysis/report.py."""
import sys

from .analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
