"""Clustering baselines against their papers' tables (BreastMNIST: paper 000 Table 2; USPS, MNIST-test:
paper 004 Tables 3 and 2), one (data set, method, seed) cell at a time into docs/baselines/results.csv.

The study lives in usclf/studies/baseline_check.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("baseline-check", prog="pipelines/baseline_check.py"))
