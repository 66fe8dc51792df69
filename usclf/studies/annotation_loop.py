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

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from usclf.config import load_config, to_dict
from usclf.data.cache import open_dataset
from usclf.data.splits import label_fraction_mask
from usclf.stages.finetune import FinetuneConfig, finetune
from usclf.stages.pretrain import PretrainConfig, pretrain
from usclf.stages.study import cell_name, read_metrics, run_study, study_main
from usclf.stages.suggest import frame_facts, suggest
from usclf.studies.cluster_check import make_data
from usclf.studies.evidence import best_val_f1

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
    experiment: str = "annotation_loop"


def _ids(path: Path) -> list[str]:
    return pd.read_csv(path, dtype=str)["image_id"].tolist()


def _write_ids(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": ids}).to_csv(path, index=False)


def run(cfg: AnnotationLoopConfig, tracking_uri: str | None = None, progress: bool = True) -> pd.DataFrame:
    out = Path(cfg.out)
    data = make_data(out, cfg.exams, cfg.size)
    lsd = out / "lsd" / "model.pt"
    if not lsd.is_file():
        pretrain(load_config(PretrainConfig, ROOT / cfg.pretrain_config,
                             [f"data.path={data}", f"out={lsd.parent}", f"augment.size={cfg.size}",
                              "evaluate_after=false", "train.progress=false", f"experiment={cfg.experiment}",
                              *cfg.pretrain_overrides]), tracking_uri=tracking_uri)
    ds = open_dataset(data, data / "manifest_split_seed0.csv")
    train = np.flatnonzero((ds.manifest["split"] == "train").to_numpy())
    lsd_cluster = frame_facts(lsd, ds, train, np.zeros(len(train), bool)).cluster
    cluster_of = dict(zip(ds.manifest["image_id"].astype(str).iloc[train], lsd_cluster))

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
                          pool_splits=("train",), strategy=cell["strategy"], seed=1000 * seed + r, progress=False)
            _write_ids(labeled, _ids(prev / "labeled.csv") + _ids(sug.csv))
        finetune(load_config(FinetuneConfig, ROOT / cfg.finetune_config,
                             [f"data.path={data}", f"out={cell_out}", f"labeled_ids={labeled}",
                              f"model.init={lsd}", f"train.seed={seed}", f"augment.size={cfg.size}",
                              "figures=false", "train.progress=false", f"experiment={cfg.experiment}",
                              *cfg.finetune_overrides]), tracking_uri=tracking_uri, parent_run_id=parent)
        ids = _ids(labeled)
        return {"f1": read_metrics(cell_out)["test/weighted_f1"], "val_f1": best_val_f1(cell_out),
                "n_labelled": len(ids), "clusters_covered": len({cluster_of[i] for i in ids}),
                "exams_labelled": int(ds.manifest.set_index("image_id").loc[ids, "exam_id"].nunique())}

    df = run_study(cfg.experiment, out, cells, run_cell, ["strategy", "round"], None,
                   {"study": "annotation_loop", **to_dict(cfg)}, tracking_uri, progress)
    full = with_start_rows(df, cfg.strategies)
    plot_loop(full, out / "annotation_loop.png")
    print(loop_table(full))
    return df


def with_start_rows(df: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    """Round 0 (shared start) copied under every strategy, for per-strategy curves and paired differences."""
    start = df[df["strategy"] == "start"]
    return pd.concat([df[df["strategy"] != "start"], *[start.assign(strategy=s) for s in strategies]],
                     ignore_index=True).sort_values(["strategy", "seed", "round"], kind="stable")


def loop_table(full: pd.DataFrame, ref: str = "random") -> str:
    """Markdown: test weighted F1 per strategy and round (mean [95 % CI], n seeds) + paired gain over `ref`."""
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
    lines += ["", f"Paired gain over {ref} (same seed), points of test weighted F1, mean [95 % CI], wins/seeds:", "",
              "| strategy | " + " | ".join(f"round {r}" for r in rounds[1:]) + " |", "|---" * len(rounds) + "|"]
    base = full[full["strategy"] == ref].set_index(["seed", "round"])["f1"]
    for st, g in full[full["strategy"] != ref].groupby("strategy", sort=True):
        d = (g.set_index(["seed", "round"])["f1"] - base).dropna()
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
    for st, g in full.groupby("strategy", sort=True):
        m = g.groupby("round").agg(n=("n_labelled", "mean"), f1=("f1", "mean"), sd=("f1", "std"))
        ax.errorbar(m["n"], m["f1"], yerr=m["sd"].fillna(0), marker="o", capsize=3, label=st)
    ax.set_xlabel("labelled train frames")
    ax.set_ylabel("test weighted F1 (mean ± sd over seeds)")
    ax.set_title("simulated annotation loop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def main(argv=None) -> int:
    return study_main("annotation_loop", __doc__, AnnotationLoopConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
