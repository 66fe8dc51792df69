"""Label-fraction study (paper 003 Fig. 6): strategies x label fractions x seeds, . ...

The study lives in usclf/studies/label_fraction_study.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("label-fractions", prog="pipelines/label_fraction_study.py"))
