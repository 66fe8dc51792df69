"""Deep clustering vs the same backbone untrained, on simulated exams (issue: PICA/LSD pretraining).

    python pipelines/cluster_check.py --exams 160 --epochs 10 --out cluster_check_out

Simulates exams, ingests them at --size px, then for PICA and LSD: pretrain -> evaluate (Algorithm 1 on
val, thresholds on val, test report), and evaluates an untrained model of the same architecture the same
way. Prints NMI / ACC / matched weighted F1 per method and writes them to OUT/cluster_check.csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch


from usclf.config import load_config
from usclf.data.ingest import IngestStageConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.splits import split_dataset
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.stages.common import open_split, preprocess_meta
from usclf.stages.evaluate import EvaluateConfig, evaluate
from usclf.stages.pretrain import PretrainConfig, default_k, pretrain
from usclf.studies.args import check_exams, check_positive
from usclf.studies.entry import study_lock

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make_data(out: Path, exams: int, size: int, seed: int = 0) -> Path:
    """Simulated exams -> ingested, split dataset folder (demo split proportions)."""
    raw, ds = out / "exams", out / "dataset"
    if not (ds / "manifest_split_seed0.csv").is_file():
        simulate(raw, SimulateConfig(exams=exams, size=int(size * 1.5), seed=seed), progress=False)
        cfg = load_config(IngestStageConfig, CONFIGS / "ingest_demo.yaml", [{"ingest.size": size}])
        ingest(raw, ds, raw / "labels.csv", cfg.ingest, progress=False)
        split_dataset(ds, cfg.split)
    return ds


def untrained_model(cfg: PretrainConfig, path: Path) -> Path:
    """The pretraining architecture with its initial (seeded) weights, saved as a model file."""
    ds, _ = open_split(cfg.data)
    k, vocab = default_k(ds, cfg.min_count)
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg.model.backbone, "cluster", num_clusters=k)
    return save_model_file(path, model, ModelInfo(list(ds.classes), "pretrain", "untrained",
                                                  preprocess_meta(ds, cfg.augment), vocab=vocab))


def run(out: Path, exams: int = 160, size: int = 64, epochs: int = 10, lr: float = 1e-3,
        methods=("untrained", "pica", "lsd"), tracking_uri: str | None = None, extra: list[str] | None = None
        ) -> pd.DataFrame:
    ds = make_data(out, exams, size)
    rows = []
    for m in methods:
        t0 = time.time()
        over = [{"data.path": ds, "out": out / m, "train.epochs": epochs, "train.optim.lr": lr,
                 "augment.size": size, "train.progress": False, "evaluate_after": False}, *(extra or [])]
        cfg = load_config(PretrainConfig, CONFIGS / f"pretrain_{'pica' if m == 'pica' else 'lsd'}_demo.yaml", over)
        path = untrained_model(cfg, out / m / "model.pt") if m == "untrained" else pretrain(cfg, tracking_uri=tracking_uri)
        r = evaluate(EvaluateConfig(model=str(path), out=str(out / m / "eval"), figures=m != "untrained",
                                    data=cfg.data), tracking_uri=tracking_uri, progress=False)
        met = r["metrics"]
        rows.append({"method": m, "nmi": met["test/nmi"], "acc": met["test/acc"], "ari": met["test/ari"],
                     "purity": met["test/purity"], "weighted_f1": met["test/weighted_f1"],
                     "seconds": round(time.time() - t0, 1)})
    df = pd.DataFrame(rows)
    df.to_csv(out / "cluster_check.csv", index=False)
    return df


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="cluster_check_out", help="output folder (data is reused if present)")
    p.add_argument("--exams", type=int, default=160, help="simulated exams")
    p.add_argument("--size", type=int, default=64, help="image size in pixels")
    p.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    args = p.parse_args(argv)
    with study_lock("cluster-check", args.out):   # before any check that could write
        return _main(args)


def _main(args) -> int:
    check_exams(args.exams)
    check_positive("--size", args.size, 32, strict=False)
    check_positive("--epochs", args.epochs, 1, strict=False)
    check_positive("--lr", args.lr)
    df = run(Path(args.out), args.exams, args.size, args.epochs, args.lr)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("cluster-check"))
