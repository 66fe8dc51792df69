"""Write docs/results.md from evidence runs (`pipelines/evidence.py` output . ...

The study lives in usclf/studies/evidence_report.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("evidence-report", prog="pipelines/evidence_report.py"))
