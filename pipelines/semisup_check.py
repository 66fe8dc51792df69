"""Measurement (issue 4): at 10 % labels on simulated exams, does FixMatch . ...

The study lives in usclf/studies/semisup_check.py (usage in its docstring)."""
import sys

from usclf.studies.semisup_check import main

if __name__ == "__main__":
    sys.exit(main())
