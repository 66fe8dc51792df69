"""Lambda sensitivity (paper 003 Fig. 5): PICA vs LSD over lambda x seeds, nested MLflow runs, box plot.

    python pipelines/lambda_sensitivity.py --config configs/study_lambda_demo.yaml

Each cell pretrains with the given method and lambda, then evaluates (Algorithm 1 matching, thresholds
on validation); the matched test weighted F1 is the study's score.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


from usclf.config import load_config, to_dict
from usclf.eval.plots import plot_lambda_boxplot
from usclf.stages.pretrain import PretrainConfig, pretrain
from usclf.studies.harness import read_metrics, run_study, study_main

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LambdaStudyConfig:
    data: str = "data/dataset"
    out: str = "runs/lambda_sensitivity"
    methods: list[str] = field(default_factory=lambda: ["pica", "lsd"])
    lambdas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 5.0, 10.0])  # paper Fig. 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pretrain_config: str = "configs/pretrain_lsd.yaml"
    stage_overrides: list[str] = field(default_factory=list)
    experiment: str = "lambda_sensitivity"


def run(cfg: LambdaStudyConfig, tracking_uri: str | None = None, progress: bool = True):
    cells = [{"method": m, "lam": lam, "seed": s} for m in cfg.methods for lam in cfg.lambdas for s in cfg.seeds]

    def run_cell(cell: dict, out: Path, parent: str) -> dict:
        over = [{"data.path": cfg.data, "out": out, "method": cell["method"], "options.lam": cell["lam"],
                 "train.seed": cell["seed"], "experiment": cfg.experiment, "train.progress": False},
                *cfg.stage_overrides]
        pretrain(load_config(PretrainConfig, ROOT / cfg.pretrain_config, over), tracking_uri=tracking_uri,
                 parent_run_id=parent)
        m = read_metrics(out)
        return {"f1": m["test/weighted_f1"], "nmi": m["test/nmi"], "acc": m["test/acc"]}

    df = run_study(cfg.experiment, Path(cfg.out), cells, run_cell, ["method", "lam"],
                   lambda d, png: plot_lambda_boxplot(d, png, "matched test weighted F1 vs lambda"),
                   {"study": "lambda_sensitivity", **to_dict(cfg)}, tracking_uri, progress)
    print((Path(cfg.out) / "summary.csv").read_text())
    return df


def main(argv=None) -> int:
    return study_main("lambda", __doc__, LambdaStudyConfig, run, argv)


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("lambda"))
