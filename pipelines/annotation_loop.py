"""Simulated annotation loop: `usclf suggest` vs uncertainty-only vs random at equal budget.

The study lives in usclf/studies/annotation_loop.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("annotation-loop", prog="pipelines/annotation_loop.py"))
