"""Simulated annotation loop: `usclf suggest` vs uncertainty-only vs random at equal budget.

The study lives in usclf/studies/annotation_loop.py (usage in its docstring)."""
import sys

from usclf.studies.annotation_loop import main

if __name__ == "__main__":
    sys.exit(main())
