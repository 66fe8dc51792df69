"""Deep clustering vs the same backbone untrained, on simulated exams (issue: . ...

The study lives in usclf/studies/cluster_check.py (usage in its docstring)."""
import sys

from usclf.studies.cluster_check import main

if __name__ == "__main__":
    sys.exit(main())
