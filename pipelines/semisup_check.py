"""Measurement (issue 4): at 10 % labels on simulated exams, does FixMatch . ...

The study lives in usclf/studies/semisup_check.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("semisup-check", prog="pipelines/semisup_check.py"))
