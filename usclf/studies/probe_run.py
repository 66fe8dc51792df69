"""The probe's command line: builds the world, runs every registered case (probe_cases, probe_sr), writes the
report. Kept apart from probe_hardening so that the case modules can import its helpers without a circle."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import probe_cases, probe_hardening, probe_sr  # noqa: F401 - importing the case modules registers them
from .probe_hardening import CASES, build_world, report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=probe_hardening.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/reliability_probe.md", help="Markdown report (the CSV goes beside it)")
    p.add_argument("--work", help="scratch folder, kept (and its world reused by the next probe); default: a "
                   "temporary folder, removed at the end")
    p.add_argument("--only", nargs="+", metavar="CASE", help="run only these cases (the world is built anyway)")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="usclf-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        w = build_world(work.resolve())
        print(f"world built in {time.monotonic() - t0:.0f} s", flush=True)
        rows = []
        for name, (issue, what, fn) in CASES.items():
            if a.only and name not in a.only:
                continue
            t1 = time.monotonic()
            try:
                outcome, detail = fn(w)
            except Exception as e:  # noqa: BLE001 - a broken case is reported, the probe goes on
                outcome, detail = "traceback", f"probe case failed: {type(e).__name__}: {e}"[:200]
            rows.append(dict(case=name, issue=issue, what=what, outcome=outcome, secs=time.monotonic() - t1,
                             detail=detail))
            print(f"{outcome:<13} {name:<34} {detail[:110]}", flush=True)
        print(report(rows, time.monotonic() - t0, Path(a.out) if a.out else None, bool(a.only), list(CASES)))
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
