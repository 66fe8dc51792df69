"""Throughput benchmarks; speed claims in the README and closing notes come from . ...

The study lives in usclf/studies/bench.py (usage in its docstring)."""
import sys

from usclf.studies.entry import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli("bench", prog="pipelines/bench.py"))
