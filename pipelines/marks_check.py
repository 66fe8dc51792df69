"""Do the models lean on burned-in marks (calipers, text)? Test images with marks removed vs a control.

The study lives in usclf/studies/marks_check.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("marks-check", prog="pipelines/marks_check.py"))
