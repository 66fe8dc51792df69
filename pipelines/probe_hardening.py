"""Reliability probe (issue 24): re-run every case of the issue's "Why" against the current code.

The probe lives in usclf/studies/probe_hardening.py (usage in its docstring)."""
import sys

from usclf.studies.probe_run import main

if __name__ == "__main__":
    sys.exit(main())
