"""Lambda sensitivity (paper 003 Fig. 5): PICA vs LSD over lambda x seeds, nested . ...

The study lives in usclf/studies/lambda_sensitivity.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("lambda", prog="pipelines/lambda_sensitivity.py"))
