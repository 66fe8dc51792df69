"""Throughput benchmarks; speed claims in the README and closing notes come from . ...

The study lives in usclf/studies/bench.py (usage in its docstring)."""
import sys

from usclf.studies.bench import main

if __name__ == "__main__":
    sys.exit(main())
