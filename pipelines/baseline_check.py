"""Clustering baselines on BreastMNIST against paper 000 (Huang & Cui), Table 2.

The study lives in usclf/studies/baseline_check.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("baseline-check", prog="pipelines/baseline_check.py"))
