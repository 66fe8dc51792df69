"""Simulated annotation loop: does `usclf suggest` pick better frames to label than random, at equal budget?

    python pipelines/annotation_loop.py --config configs/study_annotation_loop.yaml

Simulated exams are ingested and split (the demo proportions); LSD is pretrained once on the unlabelled
exams. Per seed, the loop starts from the `start_fraction` label subset of the train exams (the label-fraction
draw), fine-tunes (supervised, LSD init, `finetune_config`) and then, for each strategy, runs `rounds`
rounds of: suggest `budget` train frames not yet labelled (the simulator's labels are the annotator) ->
add them -> fine-tune again from the LSD weights. Strategies: coverage (LSD clusters with no labelled frame
first, then the classifier's uncertainty; `usclf suggest`'s default), uncertainty only, random. Every
fine-tune is the same config and seed; test weighted F1 is reported per round, nothing is chosen on test.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from usclf.active.suggest import frame_facts, suggest
from usclf.config import load_config, to_dict
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestStageConfig
from usclf.data.manifest import read_image_ids as _ids
from usclf.data.splits import label_fraction_mask, split_dataset
from usclf.stages.finetune import FinetuneConfig, finetune
from usclf.stages.pretrain import PretrainConfig, pretrain
from usclf.studies.cluster_check import make_data
from usclf.studies.evidence import best_val_f1
from usclf.studies.harness import cell_name, read_metrics, run_study, study_main

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AnnotationLoopConfig:
    out: str = "runs/annotation_loop"
    exams: int = 80                       # simulated exams (demo split: 20 % of them are train exams)
    size: int = 64
    start_fraction: float = 0.05          # issue: start at 5 % labels
    budget: int = 16                      # frames added per round (~5 % of the train frames at 80 exams)
    rounds: int = 3                       # issue: 3 rounds
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    strategies: list[str] = field(default_factory=lambda: ["coverage", "uncertainty", "random"])
    pretrain_config: str = "configs/pretrain_lsd_demo.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_config: str = "configs/finetune_demo.yaml"
    finetune_overrides: list[str] = field(default_factory=list)
    split_seed: int = 0                   # the demo split drawn with this seed (a run per split seed)
    combine: list[str] = field(default_factory=list)  # run folders to report together (no training), into out
    experiment: str = "annotation_loop"


def _write_ids(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": ids}).to_csv(path, index=False)


def _prepare(cfg: AnnotationLoopConfig, out: Path, tracking_uri: str | None):
    """Data (split `cfg.split_seed`), the LSD model pretrained on its unlabelled exams, train-frame clusters."""
    data = make_data(out, cfg.exams, cfg.size)
    manifest = data / f"manifest_split_seed{cfg.split_seed}.csv"
    if not manifest.is_file():
        split = load_config(IngestStageConfig, ROOT / "configs" / "ingest_demo.yaml").split
        split_dataset(data, dataclasses.replace(split, seed=cfg.split_seed))
    lsd = out / "lsd" / "model.pt"
    if not lsd.is_file():
        pretrain(load_config(PretrainConfig, ROOT / cfg.pretrain_config,
                             [{"data.path": data, "data.split_seed": cfg.split_seed, "out": lsd.parent,
                               "augment.size": cfg.size, "evaluate_after": False, "train.progress": False,
                               "experiment": cfg.experiment}, *cfg.pretrain_overrides]), tracking_uri=tracking_uri)
    ds = open_dataset(data, manifest)
    train = np.flatnonzero((ds.manifest["split"] == "train").to_numpy())
    lsd_cluster = frame_facts(lsd, ds, train, np.zeros(len(train), bool)).cluster
    return data, lsd, ds, dict(zip(ds.manifest["image_id"].astype(str).iloc[train], lsd_cluster))


def run(cfg: AnnotationLoopConfig, tracking_uri: str | None = None, progress: bool = True) -> pd.DataFrame:
    out = Path(cfg.out)
    if cfg.combine:
        return write_report([Path(r) for r in cfg.combine], out, cfg.strategies)
    data, lsd, ds, cluster_of = _prepare(cfg, out, tracking_uri)
    cells = []
    for s in cfg.seeds:
        cells.append({"seed": s, "strategy": "start", "round": 0})
        cells += [{"seed": s, "strategy": st, "round": r} for st in cfg.strategies for r in range(1, cfg.rounds + 1)]

    def run_cell(cell: dict, cell_out: Path, parent: str) -> dict:
        seed, r = cell["seed"], cell["round"]
        labeled = cell_out / "labeled.csv"
        if r == 0:
            ids = ds.manifest["image_id"].astype(str)[label_fraction_mask(ds.manifest, cfg.start_fraction, seed)]
            _write_ids(labeled, ids.tolist())
        else:
            prev = out / "runs" / cell_name({**cell, "round": r - 1} if r > 1 else
                                            {"seed": seed, "strategy": "start", "round": 0})
            sug = suggest(prev / "model.pt", data, cfg.budget, cell_out / "suggest",
                          clusters=lsd if cell["strategy"] == "coverage" else None, labeled=str(prev / "labeled.csv"),
                          pool_splits=("train",), strategy=cell["strategy"], seed=1000 * seed + r,
                          split_seed=cfg.split_seed, progress=False)
            _write_ids(labeled, _ids(prev / "labeled.csv") + _ids(sug.csv))
        finetune(load_config(FinetuneConfig, ROOT / cfg.finetune_config,
                             [{"data.path": data, "data.split_seed": cfg.split_seed, "out": cell_out,
                               "labeled_ids": labeled, "model.init": lsd, "train.seed": seed,
                               "augment.size": cfg.size, "figures": False, "train.progress": False,
                               "experiment": cfg.experiment}, *cfg.finetune_overrides]),
                 tracking_uri=tracking_uri, parent_run_id=parent)
        ids = _ids(labeled)
        return {"f1": read_metrics(cell_out)["test/weighted_f1"], "val_f1": best_val_f1(cell_out),
                "n_labelled": len(ids), "clusters_covered": len({cluster_of[i] for i in ids}),
                "exams_labelled": int(ds.manifest.set_index("image_id").loc[ids, "exam_id"].nunique()),
                "split": cfg.split_seed}

    df = run_study(cfg.experiment, out, cells, run_cell, ["strategy", "round"], None,
                   {"study": "annotation_loop", **to_dict(cfg)}, tracking_uri, progress)
    write_report([out], out, cfg.strategies)
    return df


def write_report(runs: list[Path], out: Path, strategies: list[str]) -> pd.DataFrame:
    """Table (annotation_loop.md) and figure of one or more loop runs (e.g. one per split seed), paired by
    (split, seed); prints the table."""
    frames = [pd.read_csv(r / "results.csv") for r in runs]
    df = pd.concat([f.assign(split=f["split"].fillna(0) if "split" in f else 0) for f in frames], ignore_index=True)
    full = with_start_rows(df, strategies)
    out.mkdir(parents=True, exist_ok=True)
    full.to_csv(out / "annotation_loop_all.csv", index=False)
    plot_loop(full, out / "annotation_loop.png")
    table = loop_table(full) + "\n\n" + pick_table(runs)
    (out / "annotation_loop.md").write_text(table + "\n")
    print(table)
    return df


def pick_table(runs: list[Path]) -> str:
    """Markdown: what each strategy picked over all rounds - the share of picks by reason (cover / the class
    whose threshold margin made the frame uncertain / random) and the picked frames' true positive rate per class
    (the simulator's labels), beside the train pool's."""
    import re

    rows, pool = [], []
    for run in runs:
        ds = open_dataset(run / "dataset", run / "dataset" / f"manifest_split_seed{_split_of(run)}.csv")
        man, cls = ds.manifest.set_index("image_id"), list(ds.classes)
        pool.append(man.loc[man["split"] == "train", cls])
        for f in sorted((run / "runs").glob("*/suggest/suggestions.csv")):
            st = re.search(r"strategy(\w+)-round", str(f))[1]
            sug = pd.read_csv(f)
            kind = sug["reason"].str.extract(r"^(cover|random|uncertain)(?:: (\w+))?")
            rows.append(pd.concat([man.loc[sug["image_id"], cls].reset_index(drop=True),
                                   pd.DataFrame({"strategy": st, "why": kind[1].fillna(kind[0]).to_numpy()})], axis=1))
    picks = pd.concat(rows, ignore_index=True)
    why = pd.crosstab(picks["strategy"], picks["why"], normalize="index")
    rate = picks.groupby("strategy")[cls].mean()
    rate.loc["(train pool)"] = pd.concat(pool)[cls].mean()
    lines = ["Share of picks by reason (over rounds, seeds and splits):", "",
             "| strategy | " + " | ".join(why.columns) + " |", "|---" * (len(why.columns) + 1) + "|"]
    lines += [f"| {st} | " + " | ".join(f"{v:.2f}" for v in r) + " |" for st, r in why.iterrows()]
    lines += ["", "True positive rate per class of the picked frames:", "",
              "| strategy | " + " | ".join(cls) + " |", "|---" * (len(cls) + 1) + "|"]
    lines += [f"| {st} | " + " | ".join(f"{v:.2f}" for v in r) + " |" for st, r in rate.iterrows()]
    return "\n".join(lines)


def _split_of(run: Path) -> int:
    r = pd.read_csv(run / "results.csv")
    return int(r["split"].iloc[0]) if "split" in r and r["split"].notna().any() else 0


def with_start_rows(df: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    """Round 0 (shared start) copied under every strategy, for per-strategy curves and paired differences."""
    start = df[df["strategy"] == "start"]
    return pd.concat([df[df["strategy"] != "start"], *[start.assign(strategy=s) for s in strategies]],
                     ignore_index=True).sort_values(["strategy", "split", "seed", "round"], kind="stable")


def loop_table(full: pd.DataFrame, ref: str = "random") -> str:
    """Markdown: test weighted F1 per strategy and round (mean [95 % CI] over split x seed) + paired gain over
    `ref` (same split, seed and round) with wins."""
    from usclf.eval.report import seeds_summary

    def ci(v) -> str:
        s = seeds_summary(list(v))
        return f"{s['mean']:.3f} [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]" if s["n"] > 1 else f"{s['mean']:.3f}"

    rounds = sorted(full["round"].unique())
    lines = ["| strategy | " + " | ".join(f"round {r}" for r in rounds) + " |",
             "|---" * (len(rounds) + 1) + "|"]
    for st, g in full.groupby("strategy", sort=True):
        lab = g.groupby("round")["n_labelled"].mean()
        lines.append(f"| {st} | " + " | ".join(f"{ci(g[g['round'] == r]['f1'])} ({lab[r]:.0f} frames)"
                                                for r in rounds) + " |")
    n = full.groupby(["split", "seed"]).ngroups
    lines += ["", f"n = {n} (split seed x training seed). Paired gain over {ref} (same split and seed), in points "
              "of test weighted F1: mean [95 % CI], wins/pairs:", "",
              "| strategy | " + " | ".join(f"round {r}" for r in rounds[1:]) + " |", "|---" * len(rounds) + "|"]
    base = full[full["strategy"] == ref].set_index(["split", "seed", "round"])["f1"]
    for st, g in full[full["strategy"] != ref].groupby("strategy", sort=True):
        d = (g.set_index(["split", "seed", "round"])["f1"] - base).dropna()
        cells = []
        for r in rounds[1:]:
            v = 100 * d.xs(r, level="round")
            cells.append(f"{ci(v)} {int((v > 0).sum())}/{len(v)}")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_loop(full: pd.DataFrame, png: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (st, g) in enumerate(full.groupby("strategy", sort=True)):
        m = g.groupby("round").agg(n=("n_labelled", "mean"), f1=("f1", "mean"), sd=("f1", "std"))
        ax.errorbar(m["n"] + 0.6 * (i - 1), m["f1"], yerr=m["sd"].fillna(0), marker="o", capsize=3, label=st)
    ax.set_xlabel("labelled train frames")
    ax.set_ylabel("test weighted F1 (mean ± sd over seeds)")
    ax.set_title("simulated annotation loop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def main(argv=None) -> int:
    return study_main("annotation-loop", __doc__, AnnotationLoopConfig, run, argv)


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("annotation-loop"))
