"""Multi-run studies: one MLflow parent run, one nested child run per cell, a summary table and a figure.

A study is a list of cells (dicts of params). `run_study` runs each cell through a stage function under
the parent run, reads the cell's test metrics back, and logs the table (+ per-group mean / 95 % CI) and
the figure to the parent. Finished cells are kept in OUT/results.csv, so a re-run skips them.

In MLflow a study is one experiment: the parent run and its nested children (tag mlflow.parentRunId). Each
child is tagged with its cell (strategy = the cell's first grouping key, label_fraction, seed, split seed; the
stage itself tags init = random / imagenet / lsd / pica ...) and carries the label fraction as a numeric metric
`label_fraction`. Where the cells vary a label fraction, the parent logs per strategy the mean test F1 as the metric
series `test_f1/<strategy>` whose step is the label percentage: the run's chart draws the curves.
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
from ..eval.report import seeds_summary
from ..tracking import PARENT_TAG, Tracker, mlflow_key


# the label fraction was spelled `fraction` in results.csv and cell folders written before 2026-12-07
LEGACY_COLUMNS = {"fraction": "label_fraction"}


def cell_name(cell: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in cell.items())


def cell_dir(root: Path, cell: dict) -> Path:
    """A cell's folder under `root`: its own name, or the name an earlier version gave it when only that exists."""
    path = Path(root) / cell_name(cell)
    old_key = {new: old for old, new in LEGACY_COLUMNS.items()}
    legacy = Path(root) / cell_name({old_key.get(k, k): v for k, v in cell.items()})
    return legacy if not path.exists() and legacy.exists() else path


def read_results(path: Path) -> pd.DataFrame:
    """A study's results.csv, with the columns of earlier versions under their current names."""
    return pd.read_csv(path).rename(columns=LEGACY_COLUMNS)


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
              tracking_uri: str | None = None, progress: bool = True, experiment: str | None = None,
              parent_run_id: str | None = None, child_tags: dict | None = None) -> pd.DataFrame:
    """Run every cell under one parent run; `run_cell(cell, cell_out, parent_run_id) -> {'f1': ...}`.
    The parent goes to `experiment` (default `name`), which must be the experiment the stages log to, nested
    under `parent_run_id` when given; `child_tags` (e.g. the split seed) tag every child beside its cell."""
    out.mkdir(parents=True, exist_ok=True)
    done_path = out / "results.csv"
    done = read_results(done_path) if done_path.is_file() else pd.DataFrame()
    rows = done.to_dict("records")
    finished = {cell_name({k: r[k] for k in cells[0]}) for r in rows} if cells and rows else set()
    with Tracker(tracking_uri, experiment or name, f"{name}-study", params, {"study": name},
                 parent_run_id) as parent:
        children = StudyChildren(parent)
        for cell in tqdm(cells, desc=name, unit="run", disable=not progress):
            if cell_name(cell) in finished:
                continue
            res = run_cell(cell, cell_dir(out / "runs", cell), parent.run_id)
            children.tag_new({**cell_tags(cell, by), **(child_tags or {})})
            rows.append({**cell, **res})
            pd.DataFrame(rows).to_csv(done_path, index=False)  # a re-run skips finished cells
        df = pd.DataFrame(rows)
        table = summarise(df, by)
        table.to_csv(out / "summary.csv", index=False)
        fig = plot(df, out / f"{name}.png") if plot is not None else None
        parent.log_metrics({f"mean_f1/{cell_name(dict(zip(by, r[by])))}": r["mean"] for _, r in table.iterrows()})
        if len(by) == 2 and by[1] == "label_fraction":
            log_fraction_curves(parent, df, by[0])
        for f in (done_path, out / "summary.csv", fig):
            if f is not None:
                parent.log_artifact(f)
    return df


def cell_tags(cell: dict, by: list[str]) -> dict:
    """A child's study tags: strategy (the cell's first grouping key), label_fraction, seed, split seed."""
    tags = {"strategy": cell[by[0]]} if by and by[0] in cell else {}
    return {**tags, **{k: cell[k] for k in ("label_fraction", "seed", "split_seed") if k in cell}}


def log_fraction_curves(tracker: Tracker, df: pd.DataFrame, strategy: str = "method", value: str = "f1",
                        fraction: str = "label_fraction", prefix: str = "test_f1") -> dict[str, dict[int, float]]:
    """Per strategy, the mean `value` over all rows (seeds, split seeds) at each label fraction as the metric
    series `<prefix>/<strategy>` whose step is the label percentage (0.1 -> step 10): MLflow's line chart of
    the parent run draws the label-fraction curves. Returns {metric: {step: mean}}."""
    curves: dict[str, dict[int, float]] = {}
    if df.empty or not {strategy, fraction, value} <= set(df.columns):
        return curves
    for (s, f), v in df.groupby([strategy, fraction], sort=True)[value].mean().items():
        curves.setdefault(mlflow_key(f"{prefix}/{s}"), {})[int(round(float(f) * 100))] = float(v)
    for key, points in curves.items():
        for step, v in sorted(points.items()):
            tracker.log_metrics({key: v}, step=step)
    return curves


class StudyChildren:
    """Tags the children a study's parent run gained since the last call: the stages create them (with the
    stage's own tags: method, init, label_fraction, seed) and the study adds what only it knows (strategy, split seed).
    Tags fill in, never overwrite a stage's own; the label fraction also becomes the numeric metric
    `label_fraction`."""

    def __init__(self, parent: Tracker):
        self.parent = parent
        self.seen: set[str] = set()
        self.client = None
        if parent.enabled and parent.run_id is not None:
            from mlflow.tracking import MlflowClient
            self.client = MlflowClient(tracking_uri=parent.uri)
            self.experiment_id = self.client.get_run(parent.run_id).info.experiment_id
            self.seen = {r.info.run_id for r in self._children()}

    def _children(self) -> list:
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(exps, f"tags.{PARENT_TAG} = '{self.parent.run_id}'", max_results=50000)

    def tag_new(self, tags: dict) -> list[str]:
        """Tag the children not seen before; returns their run ids."""
        if self.client is None:
            return []
        from mlflow.entities import Metric, RunTag
        new = [r for r in self._children() if r.info.run_id not in self.seen]
        stray = {r.info.experiment_id for r in new} - {self.experiment_id}
        if stray:  # the UI nests runs of one experiment only
            print(f"warning: {len(new)} child run(s) of study run {self.parent.run_id} logged to another MLflow "
                  "experiment than it: give the stages the study's experiment", file=sys.stderr)
        for r in new:
            add = {k: str(v) for k, v in tags.items() if k not in r.data.tags}
            split = r.data.params.get("config.data.split_seed")
            if "split_seed" not in r.data.tags and "split_seed" not in add and split is not None:
                add["split_seed"] = split  # the stage's own split seed (a study over one split)
            frac = tags.get("label_fraction", r.data.tags.get("label_fraction"))
            metrics = []
            if frac is not None and "label_fraction" not in r.data.metrics:
                metrics = [Metric("label_fraction", float(frac), int(r.info.start_time or 0), 0)]
            self.client.log_batch(r.info.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in add.items()])
            self.seen.add(r.info.run_id)
        return [r.info.run_id for r in new]


def study_main(name: str, doc: str, cfg_cls, run: Callable, argv=None) -> int:
    """Command line of a study pipeline (`name`: its key in usclf.studies.entry.STUDIES): --config YAML, key=value overrides,
    an exclusive lock on the config's `out`; errors are raised for usclf.studies.entry to print as one line."""
    p = argparse.ArgumentParser(prog=name, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="study YAML (see configs/study_*.yaml)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: env MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="study config overrides")
    args = p.parse_args(argv)
    from ..studies.entry import study_lock
    cfg = load_config(cfg_cls, args.config, args.overrides)
    with study_lock(name, cfg.out):     # one writer per study output
        run(cfg, args.tracking_uri, not args.quiet)
    return 0
