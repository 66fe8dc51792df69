"""One entry for every study: `usclf study NAME ...` and `python pipelines/MODULE.py ...` run the same code, take
the same exclusive lock on the study's output (`study_lock`, called by each study once its --out is known, before
any check that could write) and report the project's errors the same way: one line, exit 2 (Ctrl-C: 130)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import ContextManager

from ..errors import run_reporting
from ..locks import output_lock


STUDIES = {  # `usclf study NAME` -> (module in usclf.studies, help)
    "demo": ("demo", "the `make demo` story on simulated exams"),
    "evidence": ("evidence", "label-efficiency evidence run: strategies x fractions x seeds x split seeds"),
    "evidence-report": ("evidence_report", "write docs/results.md from evidence run folders"),
    "label-fractions": ("label_fraction_study", "paper Fig. 6: strategies x label fractions x seeds"),
    "lambda": ("lambda_sensitivity", "paper Fig. 5: PICA vs LSD over lambda x seeds"),
    "cluster-check": ("cluster_check", "deep clustering vs the same backbone untrained"),
    "semisup-check": ("semisup_check", "FixMatch two-head vs supervised from one LSD checkpoint"),
    "baseline-check": ("baseline_check", "clustering baselines against their papers' tables"),
    "annotation-loop": ("annotation_loop", "simulated annotation loop: usclf suggest vs uncertainty vs random"),
    "bench": ("bench", "throughput benchmarks (the source of every speed claim)"),
    "marks-check": ("marks_check", "do the models lean on burned-in marks? test images with marks removed vs a control"),
}


def study_lock(name: str, out: str | Path) -> ContextManager[None]:
    """One writer per study output: a second `usclf study NAME` / `python pipelines/...` on `out` stops with
    `OUT is being written by another usclf study NAME (pid N)`, before it writes anything."""
    return output_lock(out, f"study {name}")


def run_study_cli(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run study `name` (a key of STUDIES) with `argv`; errors as `PROG: error: ...`, exit 2."""
    prog = prog or f"usclf study {name}"
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting(prog, lambda: importlib.import_module(f"usclf.studies.{STUDIES[name][0]}").main(argv))
