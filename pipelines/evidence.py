"""Evidence run (issue: label efficiency): strategies x label fractions x training . ...

The study lives in usclf/studies/evidence.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("evidence", prog="pipelines/evidence.py"))
