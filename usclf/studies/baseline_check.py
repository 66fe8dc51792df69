"""Clustering baselines against their papers' tables, in resumable cells: BreastMNIST (paper 000 Table 2),
USPS and MNIST-test (paper 004 Tables 3 and 2); and on real abdominal ultrasound (abdomen_us: k-means,
DeepCluster, PICA and LSD on the same frames, scored alike, with the matched test F1).

    python pipelines/baseline_check.py --dataset breastmnist --seeds 0 1 2
    python pipelines/baseline_check.py --dataset usps --methods kmeans dec idec --seeds 0 1 2
    python pipelines/baseline_check.py --report        # docs/baselines.md from the results file alone

A cell is one (data set, method, seed). Each finished cell is added at once to the results file (default
docs/baselines/results.csv: ACC, NMI, ARI as fractions, the largest cluster's share, wall and CPU seconds,
machine, settings, command, commit); a rerun skips the cells already there with the same settings, so an
interrupted run loses at most the cell it was in, and that cell resumes from its training checkpoints under
OUT (default baseline_check_out/DATASET; its row then says resumed, and its times are the last attempt's).
DEC and IDEC start from the seed's AE + k-means autoencoder (that cell runs first when its autoencoder is
missing, and its times hold the pretraining); IDEC + graph, DCEC and IDCEC pretrain their own.

Settings: --ae-epochs N (every autoencoder), --epochs SECTION=N (ae: AE + k-means / DEC / IDEC / IDEC + graph;
cae; dcec; idcec), --set KEY=VALUE (any baseline setting, e.g. dcec.cluster.max_steps=500). Those a method
uses are its cells' `settings` (empty: the papers' / official codes' lengths). Protocols: breastmnist: all
780 images, K = 2; usps: all 9298 images, K = 10; mnist-test: the 10000 test images, K = 10; abdomen_us: the
460 frames of the subject split (ingested once at 64 px, subjects 7 / 2 / 1 / 1), K = the label combinations.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from usclf.data.adapters import from_npz
from usclf.errors import UsclfError
from usclf.stages.baseline import baseline
from usclf.studies.baseline_report import update_readme, write_report
from usclf.studies.baseline_specs import (ABDOMEN, DATASETS, DIGITS, EXPERIMENT, METRICS, ORDER, SHARED, cell_settings,
                                          config_items, method_config, read_results, setting_items)
from usclf.studies.entry import study_lock
from usclf.studies.machine import machine_fingerprint
from usclf.tracking import Tracker

COLUMNS = ["dataset", "method", "seed", "acc", "nmi", "ari", "top_cluster", "wall_s", "cpu_s", "resumed", "machine",
           "settings", "command", "commit", "test_f1"]   # test_f1 came last: older rows read it empty
RESULTS = Path("docs/baselines/results.csv")
REPORT = Path("docs/baselines.md")
REPO = Path(__file__).resolve().parents[2]
SHARED_AE = ("dec", "idec")            # start from the seed's ae-kmeans autoencoder


def cell_key(row: dict) -> tuple:
    return row["dataset"], row["method"], int(row["seed"]), row["settings"]


def append_result(path: Path, row: dict) -> None:
    """Add one row: the whole file is written to a temp file, fsynced, then renamed over the old one."""
    path = Path(path)
    rows = read_results(path) + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o644)   # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit() -> str:
    """HEAD of this checkout, '+dirty' when its code (usclf, pipelines, configs) differs from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "usclf", "pipelines", "configs").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "unknown" if head.returncode else head.stdout.strip() + ("+dirty" if dirty else "")


def cell_dir(out: Path, settings: str, seed: int, method: str) -> Path:
    """OUT/<settings>/seed<S>/<method>: checkpoints of other settings never resume into this cell."""
    tag = "s-" + hashlib.sha1(settings.encode()).hexdigest()[:10] if settings else "default"
    return Path(out) / tag / f"seed{seed}" / method


def _adapt(data: Path, root: Path, spec) -> None:
    """The .npz adapted, or the exam folder (DATA/export, else DATA, with DATA/labels.csv) ingested and split,
    into `root` once."""
    meta = root / "dataset.json"
    if spec.ingest is None:
        if not meta.is_file() or json.loads(meta.read_text()).get("source") != data.name:
            from_npz(data, root)
        return
    marker = root / "ingested_from.txt"
    if meta.is_file() and marker.is_file() and marker.read_text() == str(data.resolve()):
        return
    from usclf.data.ingest import IngestConfig, ingest
    from usclf.data.splits import SplitConfig, split_dataset
    src = data / "export" if (data / "export").is_dir() else data
    ingest(src, root, data / "labels.csv", IngestConfig(**{k: v for k, v in spec.ingest.items() if k != "split"}),
           progress=False)
    split_dataset(root, SplitConfig(**spec.ingest["split"]))
    marker.write_text(str(data.resolve()))


def run(out: Path, data: Path | None = None, seeds: list[int] = (0, 1, 2), methods: list[str] | None = None,
        ae_epochs: int | None = None, tracking_uri: str | None = None, dataset: str = "breastmnist",
        epochs: dict | None = None, overrides: list[str] | None = None, results: Path = RESULTS,
        command: str | None = None) -> list[dict]:
    """Run every (method, seed) cell not yet in `results`, adding each row as it finishes; returns the new rows."""
    spec = DATASETS[dataset]
    default = SHARED / spec.file
    data = Path(data) if data is not None else default
    methods, seeds, out, results = list(methods or spec.methods), list(seeds), Path(out), Path(results)
    if not seeds:
        raise UsclfError("baseline_check: give at least one seed")
    if not (data.is_dir() and (data / "labels.csv").is_file() if spec.ingest else data.is_file()):
        want = "an exam folder with labels.csv" if spec.ingest else "an .npz"
        raise UsclfError(f"baseline_check: {data} not found or not {want} (see ../shared/data/README.md)")
    items = setting_items(ae_epochs, epochs, overrides)
    method_config(methods[0], 0, data, out, spec, [f"{k}={v}" for k, v in items.items()])  # bad keys: fail now
    note = "" if data.resolve() == default.resolve() else str(data)
    command = command or _command(dataset, data, seeds, methods, ae_epochs, epochs, overrides, out, results)
    done = {cell_key(r) for r in read_results(results)}
    todo = [(m, seed, cell_settings(m, items, note)) for seed in seeds for m in methods]
    for m, seed, s in todo:
        if (dataset, m, seed, s) in done:
            print(f"baseline_check: skip {dataset} {m} seed {seed}: already in {results}")
    todo = [c for c in todo if (dataset, *c) not in done]
    if not todo:
        return []
    _adapt(data, out / "dataset", spec)
    who, at, new = machine_fingerprint(short=True), commit(), []
    params = {"dataset": dataset, "data": str(data), "seeds": seeds, "methods": methods, "settings": items}
    with Tracker(tracking_uri, EXPERIMENT, f"{dataset}-{spec.table.lower().replace(' ', '')}", params) as parent:
        def cell(m: str, seed: int, settings: str) -> dict:
            where = cell_dir(out, settings, seed, m)
            resume = where.is_dir()                 # an earlier, interrupted attempt at this cell
            cfg = method_config(m, seed, out / "dataset", where, spec, config_items(settings))
            if m in SHARED_AE:
                ae = cell_dir(out, cell_settings("ae-kmeans", items, note), seed, "ae-kmeans") / "autoencoder.pt"
                cfg.ae = dataclasses.replace(cfg.ae, weights=str(ae))
            t0, c0 = time.time(), time.process_time()
            res = baseline(cfg, tracking_uri=tracking_uri, resume=resume, parent_run_id=parent.run_id)
            wall, cpu, met = time.time() - t0, time.process_time() - c0, res["metrics"]
            share = np.bincount(np.asarray(res["assignments"]).argmax(1)).max() / len(res["rows"])
            row = {"dataset": dataset, "method": m, "seed": seed, **{k: f"{met[f'all/{k}']:.6f}" for k in METRICS},
                   "top_cluster": f"{share:.4f}", "wall_s": f"{wall:.1f}", "cpu_s": f"{cpu:.1f}",
                   "resumed": "yes" if resume else "", "machine": who, "settings": settings,
                   "command": command, "commit": at,
                   "test_f1": f"{met['test/weighted_f1']:.6f}" if "test/weighted_f1" in met else ""}
            key = (dataset, m, seed, settings)
            if key not in done:
                append_result(results, row)
                done.add(key)
                new.append(row)
                print(f"baseline_check: cell {dataset} {m} seed {seed}: ACC {row['acc']} NMI {row['nmi']} "
                      f"ARI {row['ari']} in {wall:.0f} s -> {results}")
            return row

        for m, seed, s in todo:
            if (dataset, m, seed, s) in done:       # ran meanwhile as another cell's pre-step
                continue
            if m in SHARED_AE:
                ae_s = cell_settings("ae-kmeans", items, note)
                if not (cell_dir(out, ae_s, seed, "ae-kmeans") / "autoencoder.pt").is_file():
                    print(f"baseline_check: {m} seed {seed} starts from the AE + k-means autoencoder: that cell first")
                    cell("ae-kmeans", seed, ae_s)
            cell(m, seed, s)
    return new


def _command(dataset, data, seeds, methods, ae_epochs, epochs, overrides, out, results) -> str:
    """The command line equivalent to a `run(...)` call from Python."""
    argv = ["--dataset", dataset, "--data", str(data), "--seeds", *map(str, seeds), "--methods", *methods]
    argv += ["--ae-epochs", str(ae_epochs)] if ae_epochs is not None else []
    argv += ["--epochs", *(f"{k}={v}" for k, v in epochs.items())] if epochs else []
    argv += ["--set", *overrides] if overrides else []
    return shlex.join(["python", "pipelines/baseline_check.py", *argv, "--out", str(out), "--results", str(results)])


def _section_epochs(items: list[str]) -> dict | None:
    """['dcec=50', ...] -> {'dcec': 50, ...}; None when an item is malformed."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(kv) != 2 or kv[0] not in ("ae", "cae", "dcec", "idcec") or not kv[1].isdigit() or int(kv[1]) < 1
           for kv in pairs):
        return None
    return {sec: int(n) for sec, n in pairs}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="breastmnist", choices=list(DATASETS), help="paper table to reproduce")
    p.add_argument("--data", help="the dataset's .npz, or for abdomen_us a folder of exams (export/ or the folder "
                   "itself) with labels.csv (default: its file below ../shared/data)")
    p.add_argument("--out", help="checkpoints and run folders (default: baseline_check_out/DATASET)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    every = list(dict.fromkeys(ORDER + DIGITS + ABDOMEN))
    defaults = "; ".join(f"{d}: {' '.join(s.methods)}" for d, s in DATASETS.items())
    p.add_argument("--methods", nargs="+", choices=every, metavar="METHOD",
                   help=f"baselines to run, of {' '.join(every)} (default: the dataset's: {defaults})")
    p.add_argument("--ae-epochs", type=int, help="pretraining epochs of every autoencoder (default: each "
                   "method's own: ae 400 as paper 000, dcec 200, idcec 400 as the official codes)")
    p.add_argument("--epochs", nargs="+", default=[], metavar="SECTION=N",
                   help="pretraining epochs of one autoencoder family (ae, cae, dcec, idcec); over --ae-epochs")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="any other baseline setting, e.g. dcec.cluster.max_steps=500 idcec.rounds=30")
    p.add_argument("--results", default=str(RESULTS), help=f"results file, one row per cell (default {RESULTS})")
    p.add_argument("--report", nargs="?", const=str(REPORT), metavar="PATH",
                   help=f"only rebuild the Markdown report (default {REPORT}) from --results; trains nothing")
    p.add_argument("--readme", help="with --report: the README whose generated baselines table (between its "
                   "markers) is rebuilt from --results too (default: README.md when --results is the default "
                   f"{RESULTS}, else none)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    a = p.parse_args(argv)
    epochs = _section_epochs(a.epochs)
    if epochs is None or (a.ae_epochs is not None and a.ae_epochs < 1):
        p.error("--epochs takes SECTION=N with SECTION in ae, cae, dcec, idcec and N >= 1; --ae-epochs N >= 1")
    try:
        if a.report:
            write_report(Path(a.results), Path(a.report))
            print(f"baseline_check: {a.report} rebuilt from {a.results}")
            readme = a.readme or ("README.md" if Path(a.results).resolve() == Path(RESULTS).resolve() else None)
            if readme and update_readme(Path(a.results), Path(readme)):
                print(f"baseline_check: {readme}'s baselines table rebuilt from {a.results}")
            return 0
        out = Path(a.out or Path("baseline_check_out") / a.dataset)
        with study_lock("baseline-check", out):
            new = run(out, a.data, a.seeds, a.methods, a.ae_epochs, a.tracking_uri, a.dataset, epochs, a.overrides,
                      Path(a.results), shlex.join(["python", "pipelines/baseline_check.py", *argv]))
    except UsclfError as e:
        print(f"baseline_check: error: {e}", file=sys.stderr)
        return 2
    print(f"baseline_check: {len(new)} new cell(s) in {a.results}; `--report` rebuilds {REPORT}")
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("baseline-check"))
