"""Label-fraction study (paper 003 Fig. 6): strategies x label fractions x seeds, nested MLflow runs.

    python pipelines/label_fraction_study.py --config configs/study_label_fraction_demo.yaml

Strategies: supervised from ImageNet (only when local weights exist), from random, from deep clustering
(an LSD model file); semi-supervised FixMatch (two-head by default) from random and from deep clustering.
One parent run holds results.csv, summary.csv (mean / best / 95 % CI per strategy and fraction) and the
curve figure; each training run is a nested child with method, init, label_fraction and seed as params.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


from usclf.config import load_config, to_dict
from usclf.errors import UsclfError
from usclf.eval.plots import plot_label_fraction_curves
from usclf.models.backbone import find_cached_imagenet
from usclf.stages.finetune import FinetuneConfig, finetune
from usclf.stages.semisup import SemisupConfig, semisup
from usclf.studies.harness import read_metrics, run_study, study_main

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = {  # name -> (stage, init kind)
    "supervised-imagenet": ("finetune", "imagenet"), "supervised-random": ("finetune", "random"),
    "supervised-dc": ("finetune", "dc"), "semisup-random": ("semisup", "random"), "semisup-dc": ("semisup", "dc"),
}


@dataclass
class LabelFractionStudyConfig:
    """What to compare; stage settings come from the finetune / semisup config files."""
    data: str = "data/dataset"
    out: str = "runs/label_fraction_study"
    clustering_model: str = ""           # LSD/PICA model file for the "dc" initialisations
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.5, 1.0])  # paper Fig. 6
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune_config: str = "configs/finetune.yaml"
    semisup_config: str = "configs/semisup.yaml"
    stage_overrides: list[str] = field(default_factory=list)   # applied to both stages, e.g. train.device=cpu
    finetune_overrides: list[str] = field(default_factory=list)
    semisup_overrides: list[str] = field(default_factory=list)
    experiment: str = "label_fraction_study"


def _imagenet_available(backbone: str) -> bool:
    return bool(os.environ.get("USCLF_IMAGENET_WEIGHTS")) or find_cached_imagenet(backbone) is not None


def main(argv=None) -> int:
    return study_main("label-fractions", __doc__, LabelFractionStudyConfig, run, argv)


def run(cfg: LabelFractionStudyConfig, tracking_uri: str | None = None, progress: bool = True):
    unknown = [s for s in cfg.strategies if s not in STRATEGIES]
    if unknown:
        raise UsclfError(f"unknown strategy {unknown[0]}; choose from {', '.join(STRATEGIES)}")
    strategies = list(cfg.strategies)
    if any(STRATEGIES[s][1] == "dc" for s in strategies) and not Path(cfg.clustering_model).is_file():
        raise UsclfError(f"clustering_model '{cfg.clustering_model}' not found: pretrain one with `usclf pretrain`")
    backbone = load_config(FinetuneConfig, ROOT / cfg.finetune_config, cfg.finetune_overrides).model.backbone
    if "supervised-imagenet" in strategies and not _imagenet_available(backbone):
        print("supervised-imagenet skipped: no local ImageNet weights (set USCLF_IMAGENET_WEIGHTS)")
        strategies.remove("supervised-imagenet")
    cells = [{"method": s, "label_fraction": f, "seed": seed} for s in strategies for f in cfg.fractions
             for seed in cfg.seeds]

    def run_cell(cell: dict, out: Path, parent: str) -> dict:
        stage, init = STRATEGIES[cell["method"]]
        init = cfg.clustering_model if init == "dc" else init
        over = [{"data.path": cfg.data, "out": out, "label_fraction": cell["label_fraction"],
                 "train.seed": cell["seed"], "model.init": init, "figures": False,
                 "experiment": cfg.experiment, "train.progress": False}, *cfg.stage_overrides]
        if stage == "finetune":
            finetune(load_config(FinetuneConfig, ROOT / cfg.finetune_config, over + cfg.finetune_overrides),
                     tracking_uri=tracking_uri,
                     parent_run_id=parent)
        else:
            semisup(load_config(SemisupConfig, ROOT / cfg.semisup_config, over + cfg.semisup_overrides),
                    tracking_uri=tracking_uri,
                    parent_run_id=parent)
        m = read_metrics(out)
        return {"f1": m["test/weighted_f1"], "precision": m["test/weighted_precision"],
                "recall": m["test/weighted_recall"]}

    df = run_study(cfg.experiment, Path(cfg.out), cells, run_cell, ["method", "label_fraction"],
                   lambda d, png: plot_label_fraction_curves(d, png, "test weighted F1 vs label fraction"),
                   {"study": "label_fraction", **to_dict(cfg)}, tracking_uri, progress)
    print((Path(cfg.out) / "summary.csv").read_text())
    return df


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("label-fractions"))
