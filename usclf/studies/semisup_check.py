"""Measurement (issue 4): at 10 % labels on simulated exams, does FixMatch two-head from an LSD checkpoint
beat supervised fine-tuning from random init, and how do two heads compare with one?

    python pipelines/semisup_check.py --out semisup_check_out [--seeds 0 1] [--lsd PATH]

Data: the `make demo` recipe (160 simulated exams at 96 px, ingested at 64 px with configs/ingest_demo.yaml,
split by patient). LSD: `--lsd PATH`, else pretrained here with configs/pretrain_lsd_demo.yaml on the
unlabelled split. Arms (configs/*_demo.yaml, same label subset per seed in every arm):
    finetune-random   supervised BCE, random init, early stopping
    finetune-lsd      supervised BCE, LSD init            (tells the init's share of any gain)
    twohead-lsd       FixMatch two-head, LSD init         (the paper's best model)
    onehead-lsd       FixMatch one-head, LSD init
    twohead-random    FixMatch two-head, random init      (tells FixMatch's share of any gain)
Prints test weighted F1 per seed and the mean per arm; writes results.json (kept across invocations:
done runs are skipped unless --rerun), summary.json / summary.md in --out, and tracks every run in
--out/mlflow.db (nested under one parent run per invocation). Simulated data: not clinical results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


from usclf.config import load_config
from usclf.data.ingest import IngestStageConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.splits import split_dataset, split_summary
from usclf.errors import UsclfError
from usclf.eval.report import seeds_summary
from usclf.paths import check_out_dir
from usclf.stages.finetune import FinetuneConfig, finetune
from usclf.stages.pretrain import PretrainConfig, pretrain
from usclf.stages.semisup import SemisupConfig, semisup
from usclf.studies.args import check_exams, check_fractions, check_seeds
from usclf.studies.entry import study_lock
from usclf.tracking import Tracker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ARMS = {  # name -> (stage, heads, init)
    "finetune-random": ("finetune", None, "random"),
    "finetune-lsd": ("finetune", None, "lsd"),
    "twohead-lsd": ("semisup", "two", "lsd"),
    "onehead-lsd": ("semisup", "one", "lsd"),
    "twohead-random": ("semisup", "two", "random"),
}


def build_data(out: Path, exams: int) -> Path:
    """Simulate + ingest + split like `make demo` (skipped when the dataset is already there)."""
    ds = out / "dataset"
    if (ds / "manifest_split_seed0.csv").is_file():
        return ds
    simulate(out / "exams", SimulateConfig(exams=exams, size=96, format="mixed", seed=0), progress=False)
    icfg = load_config(IngestStageConfig, CONFIGS / "ingest_demo.yaml")
    ingest(out / "exams", ds, out / "exams" / "labels.csv", icfg.ingest, progress=False)
    print(split_summary(split_dataset(ds, icfg.split)), flush=True)
    return ds


def run_arm(name: str, seed: int, ds: Path, lsd: Path, out: Path, fraction: float, uri: str, parent: str,
            overrides: list[str]) -> float:
    stage, heads, init = ARMS[name]
    common = [{"data.path": ds, "out": out / name / f"seed{seed}", "model.init": lsd if init == "lsd" else init,
               "label_fraction": fraction, "train.seed": seed, "train.progress": False, "figures": False,
               "experiment": "usclf-semisup-check"}]
    if stage == "finetune":
        cfg = load_config(FinetuneConfig, CONFIGS / "finetune_demo.yaml", common + overrides)
        path = finetune(cfg, tracking_uri=uri, parent_run_id=parent)
    else:
        cfg = load_config(SemisupConfig, CONFIGS / "semisup_demo.yaml", common + [{"method": f"fixmatch-{heads}head"}] + overrides)
        path = semisup(cfg, tracking_uri=uri, parent_run_id=parent)
    metrics = json.loads((path.parent / "eval" / "metrics.json").read_text())
    return float(metrics["test/weighted_f1"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="semisup_check_out", help="output folder (reused: data and LSD are kept)")
    p.add_argument("--exams", type=int, default=160, help="simulated exams (default 160, as `make demo`)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training / label-subset seeds")
    p.add_argument("--label-fraction", type=float, default=0.1, help="label fraction (default 0.1)")
    p.add_argument("--lsd", help="LSD model file to start from (default: pretrain one here)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="which arms to run")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value",
                   help="extra overrides for every finetune/semisup run (e.g. train.max_steps=200)")
    p.add_argument("--rerun", action="store_true", help="re-run arms/seeds already in OUT/results.json")
    args = p.parse_args(argv)
    with study_lock("semisup-check", args.out):   # before any check that could write
        return _main(args)


def _main(args) -> int:
    check_exams(args.exams)
    check_fractions("--label-fraction", [args.label_fraction])
    check_seeds("--seeds", args.seeds)
    if args.lsd and not Path(args.lsd).is_file():
        raise UsclfError(f"--lsd {args.lsd} not found")
    out = Path(args.out).resolve()
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    t0 = time.time()
    ds = build_data(out, args.exams)
    lsd = Path(args.lsd) if args.lsd else out / "pretrain_lsd" / "model.pt"
    if not lsd.is_file() and any(ARMS[a][2] == "lsd" for a in args.arms):
        cfg = load_config(PretrainConfig, CONFIGS / "pretrain_lsd_demo.yaml",
                          [{"data.path": ds, "out": lsd.parent, "train.progress": False}])
        pretrain(cfg, tracking_uri=uri)
        print(f"LSD pretrained in {(time.time() - t0) / 60:.1f} min", flush=True)
    # results accumulate across invocations (arms can be added later; a killed study resumes)
    results_file = out / "results.json"
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
    scores = {arm: {int(sd): f for sd, f in v.items()} for arm, v in saved.items()}
    params = {"label_fraction": args.label_fraction, "seeds": args.seeds, "lsd": str(lsd), "overrides": args.set}
    with Tracker(uri, "usclf-semisup-check", "semisup-check", params, {"stage": "study"}) as parent:
        for seed in args.seeds:
            for arm in args.arms:
                if seed in scores.get(arm, {}) and not args.rerun:
                    continue
                t = time.time()
                f1 = run_arm(arm, seed, ds, lsd, out, args.label_fraction, uri, parent.run_id, args.set)
                scores.setdefault(arm, {})[seed] = f1
                results_file.write_text(json.dumps(scores, indent=2))
                print(f"[{arm} seed {seed}] test weighted F1 {f1:.4f} ({time.time() - t:.0f} s)", flush=True)
        summary = {arm: {"per_seed": {sd: v[sd] for sd in args.seeds if sd in v},
                         **seeds_summary([v[sd] for sd in args.seeds if sd in v])}
                   for arm, v in scores.items() if any(sd in v for sd in args.seeds)}
        parent.log_metrics({f"{arm}/mean_test_weighted_f1": s["mean"] for arm, s in summary.items()})
        lines = [f"# test weighted F1 at {args.label_fraction:g} labels, seeds {args.seeds} (simulated exams)", "",
                 "| arm | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |",
                 "|---|" + "---|" * (len(args.seeds) + 1)]
        for arm, s in summary.items():
            lines.append(f"| {arm} | " + " | ".join(f"{s['per_seed'].get(sd, np.nan):.4f}" for sd in args.seeds)
                         + f" | {s['mean']:.4f} |")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "summary.md").write_text("\n".join(lines) + "\n")
        parent.log_artifact(out / "summary.md")
    print("\n".join(lines))
    print(f"done in {(time.time() - t0) / 60:.1f} min; runs in {uri}")
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("semisup-check"))
