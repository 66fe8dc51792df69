"""Deep clustering vs the same backbone untrained, on simulated exams (issue: . ...

The study lives in usclf/studies/cluster_check.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("cluster-check", prog="pipelines/cluster_check.py"))
