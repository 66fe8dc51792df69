"""Clustering baselines against their papers' tables: BreastMNIST (paper 000 Table 2), USPS and MNIST-test
(paper 004 Tables 3 and 2).

    python pipelines/baseline_check.py --seeds 0 1 2 --report docs/baselines.md
    python pipelines/baseline_check.py --dataset usps --seeds 0 1 2 --report docs/baselines.md
    python pipelines/baseline_check.py --dataset mnist-test --seeds 0 1 2 --epochs dcec=200 --report docs/baselines.md

Protocols. breastmnist: all 780 images (train + val + test) clustered together, K = 2; paper 000 gives ACC
only, in %, and this table is in % (ACC, NMI, ARI x 100). usps: all 9298 images (x_train + x_test), K = 10.
mnist-test: the 10000 test images of mnist_full.npz, K = 10. Paper 004 gives fractions, and so do these
tables. The .npz is adapted once into OUT/dataset. The dense autoencoder is pretrained once per seed
(AE + k-means) and reused by DEC and IDEC; DCEC, IDCEC and IDEC + graph pretrain their own. Pretraining
lengths: --ae-epochs sets every autoencoder, --epochs SECTION=N one family (ae: AE + k-means/DEC/IDEC/IDEC
+ graph; cae; dcec; idcec), --set KEY=VALUE any other baseline setting (e.g. dcec.cluster.max_steps=500).
Rows without a paper number (PCA, HOG, LBP, AE + k-means in paper 004) are printed for reference. Runs nest
under one MLflow parent; the table (mean, sd, min, max over seeds next to the paper) goes to
OUT/baseline_check.csv, the per-run numbers to OUT/baseline_check_runs.csv, and with --report PATH to this
dataset's own section of a Markdown file (sections of other datasets are kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from usclf.baselines.config import AEConfig, BaselineConfig
from usclf.config import apply_overrides
from usclf.data.adapters import from_npz
from usclf.errors import UsclfError
from usclf.stages.baseline import baseline
from usclf.studies.entry import study_lock
from usclf.tracking import Tracker

NAN = float("nan")
EXPERIMENT = "usclf-baseline-check"
ORDER = ["kmeans", "pca-kmeans", "hog-kmeans", "lbp-kmeans", "ae-kmeans", "dec", "idec", "idec-graph"]
DIGITS = ["kmeans", "ae-kmeans", "dec", "idec", "dcec", "idcec"]
METRICS = ("acc", "nmi", "ari")
SECTION = {"ae-kmeans": "ae", "dec": "ae", "idec": "ae", "idec-graph": "ae", "cae-kmeans": "cae",
           "cdec": "cae", "cidec": "cae", "dcec": "dcec", "idcec": "idcec"}   # method -> its autoencoder
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
_P004 = "not stated in paper 004 (Sec. 4.5: each baseline's own published settings)"
PAPER_004_LENGTHS = {"dec": _P004, "idec": _P004, "dcec": _P004 + "; official DCEC code: AE 200 ep, <= 20000 steps",
                     "idcec": "not stated in paper 004; official IDCEC code: AE 400 ep, <= 4000 steps, "
                              "CNN 50 ep x 30 rounds"}


class Spec(NamedTuple):
    title: str
    table: str                      # the paper's table, e.g. "Table 2"
    file: str                       # below ../shared/data
    fit_splits: list[str]
    k: int
    paper: str                      # paper id, names the paper_<id>_<metric> columns
    numbers: dict                   # method -> (ACC, NMI, ARI) in the table's unit
    scale: float                    # 100: table in %, 1: fractions
    methods: list[str]
    lengths: dict                   # method -> the paper's training lengths, as text


DATASETS = {
    "breastmnist": Spec("BreastMNIST", "Table 2", "breastmnist/breastmnist.npz", ["all"], 2, "000",
                        {"kmeans": (55.00, NAN, NAN), "ae-kmeans": (60.90, NAN, NAN), "dec": (62.05, NAN, NAN),
                         "idec": (63.08, NAN, NAN), "idec-graph": (72.05, NAN, NAN)}, 100.0, ORDER,
                        {m: "AE 400 ep, Adam 3e-4, batch 256 (paper 000 Sec. 4.2)"
                         for m in ("ae-kmeans", "dec", "idec", "idec-graph")}),
    "usps": Spec("USPS", "Table 3", "usps/usps.npz", ["all"], 10, "004",
                 {"kmeans": (0.668, 0.626, 0.545), "dec": (0.733, 0.706, 0.637), "idec": (0.762, 0.756, 0.679),
                  "dcec": (0.790, 0.826, 0.764), "idcec": (0.812, 0.858, 0.772)}, 1.0, DIGITS, PAPER_004_LENGTHS),
    "mnist-test": Spec("MNIST-test", "Table 2", "mnist/mnist_full.npz", ["test"], 10, "004",
                       {"kmeans": (0.542, 0.500, 0.378), "dec": (0.776, 0.724, 0.660), "idec": (0.791, 0.736, 0.666),
                        "dcec": (0.852, 0.809, 0.773), "idcec": (0.923, 0.853, 0.851)}, 1.0, DIGITS,
                       PAPER_004_LENGTHS),
}


def method_config(m: str, seed: int, data: Path, out: Path, spec: Spec, ae_epochs: int | None = None,
                  epochs: dict | None = None, overrides: list[str] | None = None) -> BaselineConfig:
    """One run's config: the dataset's protocol, then --ae-epochs, --epochs SECTION=N, then --set KEY=VALUE."""
    cfg = BaselineConfig(method=m, data=str(data), out=str(out), seed=seed, k=spec.k, fit_splits=list(spec.fit_splits),
                         figures=False, progress=False, experiment=EXPERIMENT)
    lengths = {sec: ae_epochs for sec in ("ae", "cae", "dcec", "idcec") if ae_epochs is not None}
    lengths.update(epochs or {})
    return apply_overrides(cfg, [f"{sec}.epochs={n}" for sec, n in lengths.items()] + list(overrides or []))


def training_lengths(cfg: BaselineConfig) -> str:
    """The training lengths one config uses, as text for the table and the report."""
    sec = SECTION.get(cfg.method)
    if sec is None:
        return f"k-means n_init {cfg.features.n_init}" if cfg.method.endswith("kmeans") else "see config.yaml"
    c = getattr(cfg, sec)
    text = f"AE {c.epochs} ep"
    if sec in ("dcec", "idcec"):
        text += f", <= {c.cluster.max_steps} steps"
    elif "dec" in cfg.method:
        text += f", <= {cfg.dec.max_steps} steps"
    if sec == "idcec":
        text += f", CNN {c.cnn.epochs} ep x {c.rounds} rounds"
    return text


def run(out: Path, data: Path | None = None, seeds: list[int] = (0,), methods: list[str] | None = None,
        ae_epochs: int | None = None, tracking_uri: str | None = None, dataset: str = "breastmnist",
        epochs: dict | None = None, overrides: list[str] | None = None, report: Path | None = None,
        command: str | None = None) -> pd.DataFrame:
    """Run `methods` (default: the dataset's) for every seed; returns the table, one row per method."""
    spec, t0 = DATASETS[dataset], time.time()
    data = Path(data) if data is not None else SHARED / spec.file
    methods, seeds, out = list(methods or spec.methods), list(seeds), Path(out)
    if not seeds:
        raise UsclfError("baseline_check: give at least one seed")
    if not data.is_file():
        raise UsclfError(f"baseline_check: {data} not found (see ../shared/data/README.md)")
    from_npz(data, out / "dataset")           # adapted once, shared by every run
    rows, lengths, n_images = [], {}, 0
    params = {"dataset": dataset, "data": str(data), "seeds": seeds, "methods": methods, "ae_epochs": ae_epochs,
              "epochs": epochs or {}, "overrides": overrides or []}
    with Tracker(tracking_uri, EXPERIMENT, f"{dataset}-{spec.table.lower().replace(' ', '')}", params) as parent:
        for seed in seeds:
            shared_ae = out / f"seed{seed}" / "ae-kmeans" / "autoencoder.pt"
            for m in methods:
                cfg = method_config(m, seed, out / "dataset", out / f"seed{seed}" / m, spec, ae_epochs, epochs,
                                    overrides)
                if m in ("dec", "idec") and shared_ae.is_file():   # same AE as AE + k-means
                    cfg.ae = dataclasses.replace(cfg.ae, weights=str(shared_ae))
                lengths[m] = training_lengths(cfg)
                res = baseline(cfg, tracking_uri=tracking_uri, parent_run_id=parent.run_id)
                met, n_images = res["metrics"], len(res["rows"])
                rows.append({"method": m, "seed": seed, **{k: spec.scale * met[f"all/{k}"] for k in METRICS},
                             "seconds": met["fit/seconds"]})
        df = pd.DataFrame(rows)
        table = df.groupby("method", sort=False).agg(
            **{f"{k}_{s}": (k, "std" if s == "sd" else s) for k in METRICS for s in ("mean", "sd", "min", "max")},
            seconds=("seconds", "mean"))
        for i, k in enumerate(METRICS):
            table[f"paper_{spec.paper}_{k}"] = [spec.numbers.get(m, (NAN,) * 3)[i] for m in table.index]
        table["training"] = [lengths[m] for m in table.index]
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "baseline_check.csv")
        df.to_csv(out / "baseline_check_runs.csv", index=False)
        parent.log_artifact(out / "baseline_check.csv")
        parent.log_artifact(out / "baseline_check_runs.csv")
    if report is not None:
        command = command or _command(dataset, data, seeds, methods, ae_epochs, epochs, overrides, out, report)
        meta = {"command": command, "seconds": time.time() - t0, "seeds": seeds, "n_images": n_images,
                "k": cfg.k, "fit_splits": cfg.fit_splits}
        update_report(Path(report), dataset, report_section(dataset, table, meta))
    return table


def _command(dataset, data, seeds, methods, ae_epochs, epochs, overrides, out, report) -> str:
    """The command line equivalent to a `run(...)` call from Python."""
    argv = ["--dataset", dataset, "--data", str(data), "--seeds", *map(str, seeds), "--methods", *methods]
    argv += ["--ae-epochs", str(ae_epochs)] if ae_epochs is not None else []
    argv += ["--epochs", *(f"{k}={v}" for k, v in epochs.items())] if epochs else []
    argv += ["--set", *overrides] if overrides else []
    return shlex.join(["python", "pipelines/baseline_check.py", *argv, "--out", str(out), "--report", str(report)])


def _cell(row, k: str, spec: Spec) -> str:
    d = 2 if spec.scale == 100 else 3
    v = [row[f"{k}_{s}"] for s in ("mean", "sd", "min", "max")]
    sd = "" if math.isnan(v[1]) else f" ± {v[1]:.{d}f}"
    return f"{v[0]:.{d}f}{sd} [{v[2]:.{d}f}, {v[3]:.{d}f}]"


def _num(v: float, spec: Spec) -> str:
    return "–" if math.isnan(v) else f"{v:.{2 if spec.scale == 100 else 3}f}"


def report_section(dataset: str, table: pd.DataFrame, meta: dict) -> str:
    """This dataset's Markdown section (without its markers)."""
    spec = DATASETS[dataset]
    unit = "% (ACC, NMI and ARI x 100)" if spec.scale == 100 else "fractions (as paper 004)"
    fit = "all splits" if "all" in meta["fit_splits"] else "+".join(meta["fit_splits"])
    lines = [f"## {spec.title} ({dataset}): paper {spec.paper} {spec.table}", "",
             f"- command: `{meta['command']}`",
             f"- wall time: {meta['seconds']:.0f} s; seeds: {' '.join(map(str, meta['seeds']))}",
             f"- clustered: {meta['n_images']} images ({fit}), K = {meta['k']}; values in {unit}",
             "- training lengths (used; paper):"]
    lines += [f"  - {m}: {table.loc[m, 'training']}; {spec.lengths.get(m, '–')}" for m in table.index]
    head = " | ".join(f"{k.upper()} mean ± sd [min, max] | paper {k.upper()}" for k in METRICS)
    lines += ["", f"| method | {head} | s / run |",
              "|---|---|---|---|---|---|---|---|"]
    for m, row in table.iterrows():
        paper = spec.numbers.get(m, (NAN,) * 3)
        cells = [x for i, k in enumerate(METRICS) for x in (_cell(row, k, spec), _num(paper[i], spec))]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    return "\n".join(lines)


def update_report(path: Path, dataset: str, body: str) -> None:
    """Write `body` between this dataset's markers in `path`, replacing only that section."""
    start, end = f"<!-- baseline_check:{dataset} -->", f"<!-- /baseline_check:{dataset} -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text(encoding="utf-8") if path.is_file() else (
        "# Clustering baselines against the papers\n\nSections written by `pipelines/baseline_check.py --report`.\n")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


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
    p.add_argument("--data", help="the dataset's .npz (default: its file below ../shared/data)")
    p.add_argument("--out", help="output folder (default: baseline_check_out/DATASET)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (k-means restarts, AE init, batches)")
    every = list(dict.fromkeys(ORDER + DIGITS))
    defaults = "; ".join(f"{d}: {' '.join(s.methods)}" for d, s in DATASETS.items())
    p.add_argument("--methods", nargs="+", choices=every, metavar="METHOD",
                   help=f"baselines to run, of {' '.join(every)} (default: the dataset's: {defaults})")
    p.add_argument("--ae-epochs", type=int, help="pretraining epochs of every autoencoder (default: each "
                   "method's own: ae 400 as paper 000, dcec 200, idcec 400 as the official codes)")
    p.add_argument("--epochs", nargs="+", default=[], metavar="SECTION=N",
                   help="pretraining epochs of one autoencoder family (ae, cae, dcec, idcec); over --ae-epochs")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="any other baseline setting, e.g. dcec.cluster.max_steps=500 idcec.rounds=30")
    p.add_argument("--report", help="Markdown file to write this dataset's section to (e.g. docs/baselines.md)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    a = p.parse_args(argv)
    epochs = _section_epochs(a.epochs)
    if epochs is None or (a.ae_epochs is not None and a.ae_epochs < 1):
        p.error("--epochs takes SECTION=N with SECTION in ae, cae, dcec, idcec and N >= 1; --ae-epochs N >= 1")
    out = Path(a.out or Path("baseline_check_out") / a.dataset)
    try:
        with study_lock("baseline-check", out):
            table = run(out, a.data, a.seeds, a.methods, a.ae_epochs, a.tracking_uri, a.dataset, epochs,
                        a.overrides, a.report and Path(a.report),
                        shlex.join(["python", "pipelines/baseline_check.py", *argv]))
    except UsclfError as e:
        print(f"baseline_check: error: {e}", file=sys.stderr)
        return 2
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("baseline-check"))
