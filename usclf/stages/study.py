"""Multi-run studies: one MLflow parent run, one nested child run per cell, a summary table and a figure.

A study is a list of cells (dicts of params). `run_study` runs each cell through a stage function under
the parent run, reads the cell's test metrics back, and logs the table (+ per-group mean / 95 % CI) and
the figure to the parent. Finished cells are kept in OUT/results.csv, so a re-run skips them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

from ..config import load_config
from ..errors import UsclfError
from ..eval.report import seeds_summary
from ..tracking import Tracker


def cell_name(cell: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in cell.items())


def read_metrics(stage_out: Path) -> dict:
    """Test metrics written by `evaluate` inside a stage's output folder."""
    return json.loads((Path(stage_out) / "eval" / "metrics.json").read_text())


def summarise(df: pd.DataFrame, by: list[str], value: str = "f1") -> pd.DataFrame:
    """Across seeds: n, mean, best, 95 % CI (t-distribution) per group."""
    rows = []
    for key, g in df.groupby(by, sort=True):
        s = seeds_summary(g[value].tolist())
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "n": s["n"], "mean": s["mean"], "best": s["best"],
                     "ci95_low": s["ci95_low"], "ci95_high": s["ci95_high"]})
    return pd.DataFrame(rows)


def run_study(name: str, out: Path, cells: list[dict], run_cell: Callable[[dict, Path, str], dict],
              by: list[str], plot: Callable[[pd.DataFrame, Path], Path] | None, params: dict,
              tracking_uri: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every cell under one parent run; `run_cell(cell, cell_out, parent_run_id) -> {'f1': ...}`."""
    out.mkdir(parents=True, exist_ok=True)
    done_path = out / "results.csv"
    done = pd.read_csv(done_path) if done_path.is_file() else pd.DataFrame()
    rows = done.to_dict("records")
    finished = {cell_name({k: r[k] for k in cells[0]}) for r in rows} if cells and rows else set()
    with Tracker(tracking_uri, name, f"{name}-study", params, {"study": name}) as parent:
        for cell in tqdm(cells, desc=name, unit="run", disable=not progress):
            if cell_name(cell) in finished:
                continue
            res = run_cell(cell, out / "runs" / cell_name(cell), parent.run_id)
            rows.append({**cell, **res})
            pd.DataFrame(rows).to_csv(done_path, index=False)  # a re-run skips finished cells
        df = pd.DataFrame(rows)
        table = summarise(df, by)
        table.to_csv(out / "summary.csv", index=False)
        fig = plot(df, out / f"{name}.png") if plot is not None else None
        parent.log_metrics({f"mean_f1/{cell_name(dict(zip(by, r[by])))}": r["mean"] for _, r in table.iterrows()})
        for f in (done_path, out / "summary.csv", fig):
            if f is not None:
                parent.log_artifact(f)
    return df


def study_main(name: str, doc: str, cfg_cls, run: Callable, argv=None) -> int:
    """Command line of a study pipeline: --config YAML, key=value overrides, one-line errors."""
    p = argparse.ArgumentParser(prog=name, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="study YAML (see configs/study_*.yaml)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: env MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="study config overrides")
    args = p.parse_args(argv)
    try:
        run(load_config(cfg_cls, args.config, args.overrides), args.tracking_uri, not args.quiet)
    except UsclfError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    return 0
