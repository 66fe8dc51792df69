"""Clustering baselines on BreastMNIST against paper 000 (Huang & Cui), Table 2.

The study lives in usclf/studies/baseline_check.py (usage in its docstring)."""
import sys

from usclf.studies.baseline_check import main

if __name__ == "__main__":
    sys.exit(main())
