"""`python -m tensorsim.compare A B`: does run set A behave like run set B, cell by cell (a cell: the same
values of every swept key: k, p, noise, graph)?
The command lives here; the work in tensorsim/analysis/compare.py."""
import sys

from .analysis.compare import main

if __name__ == "__main__":
    sys.exit(main())
