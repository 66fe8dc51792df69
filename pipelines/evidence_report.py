"""Write docs/results.md from evidence runs (`pipelines/evidence.py` output . ...

The study lives in usclf/studies/evidence_report.py (usage in its docstring)."""
import sys

from usclf.studies.evidence_report import main

if __name__ == "__main__":
    sys.exit(main())
