"""Evidence run (issue: label efficiency): strategies x label fractions x training . ...

The study lives in usclf/studies/evidence.py (usage in its docstring)."""
import sys

from usclf.studies.evidence import main

if __name__ == "__main__":
    sys.exit(main())
