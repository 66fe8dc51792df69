"""`make demo`: the whole usclf story on simulated exams, sized for a 2-core CPU . ...

The study lives in usclf/studies/demo.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("demo", prog="pipelines/demo.py"))
