"""`make demo`: the whole usclf story on simulated exams, sized for a 2-core CPU (about 8 minutes).

simulate -> ingest (+ patient-disjoint split) -> pretrain LSD -> evaluate clusters (report, t-SNE, gallery)
-> supervised fine-tuning and two-head FixMatch from the LSD weights at two label fractions
-> predict on a held-out folder of new exams -> Table-2-like report of the best model (chosen on validation).
Everything lands in --out; every run is tracked in the embedded MLflow DB (sqlite) inside --out, as one
experiment `demo`: a parent run (the label-fraction curves: metric test_f1/<strategy>, step = label %) with
every stage run nested under it (tags strategy, init, label_fraction, seed, split_seed).
Results on simulated data are a smoke test of the machinery, never clinical results.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd


from usclf.config import load_config
from usclf.data.ingest import IngestStageConfig, ingest
from usclf.data.simulate import SimulateConfig, format_summary, simulate
from usclf.data.splits import split_dataset, split_summary
from usclf.eval.plots import plot_label_fraction_curves
from usclf.models.modelfile import load_model_file
from usclf.predict.run import predict
from usclf.stages.evaluate import EvaluateConfig, evaluate
from usclf.stages.finetune import FinetuneConfig, finetune
from usclf.stages.pretrain import PretrainConfig, pretrain
from usclf.stages.scoring import format_report
from usclf.stages.semisup import SemisupConfig, semisup
from usclf.studies.args import check_exams, check_fractions, recreate_out
from usclf.studies.harness import StudyChildren, log_fraction_curves, read_metrics
from usclf.studies.entry import study_lock
from usclf.tracking import Tracker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS = 6
EXPERIMENT = "demo"
# The demo's sizing on top of the shared *_demo.yaml (which the evidence studies also use, so they stay).
# Measured on a 2-core AMD EPYC with AVX2 kernels (2026-12-07): the yaml's 64 px, 8 LSD epochs and 200
# FixMatch steps took 14.1 min (LSD 194 s, FixMatch 253 + 238 s), over the 10-minute budget; this sizing
# takes 8.2 min (README); a resnet18 step at 48 px costs 0.70x of one at 64 px. The cache stays 64 px (the
# input is resized from it).
SIZING = {"pretrain_lsd_demo": {"augment.size": 48, "train.epochs": 5},
          "finetune_demo": {"augment.size": 48, "train.ckpt_epochs": 5},  # 25 epoch-end saves: 15 s of 81
          "semisup_demo": {"augment.size": 48, "train.max_steps": 120}}


def banner(i: int, text: str) -> None:
    print(f"\n=== {i}/{STEPS} {text} " + "=" * max(0, 86 - len(text)), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (recreated when it is an earlier demo's; "
                   "a folder with other files is refused)")
    p.add_argument("--exams", type=int, default=120, help="simulated exams for training/evaluation")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2], help="label fractions to train at")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="extra overrides for every training stage (e.g. train.device=cpu)")
    args = p.parse_args(argv)
    with study_lock("demo", args.out):   # before any check that could write
        return _main(args)


def _main(args) -> int:
    out = Path(args.out).resolve()
    check_exams(args.exams)
    check_fractions("--fractions", args.fractions)
    progress = not args.quiet
    data = out / "dataset"
    common = [{"data.path": data, "train.progress": progress, "experiment": EXPERIMENT}]
    for cls, name in ((PretrainConfig, "pretrain_lsd_demo"), (FinetuneConfig, "finetune_demo"),
                      (SemisupConfig, "semisup_demo")):   # the overrides, checked before anything is written
        load_config(cls, CONFIGS / f"{name}.yaml", stage_overrides(name, common, args))
    recreate_out(out, legacy=("exams", "dataset", "mlflow.db"))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    with Tracker(uri, EXPERIMENT, "demo", {"exams": args.exams, "fractions": args.fractions,
                                            "overrides": args.overrides}, {"study": EXPERIMENT}) as parent:
        return story(args, out, uri, data, common, parent)


def stage_overrides(name: str, common: list, args) -> list:
    """One stage's overrides: the shared ones, the demo's sizing, then the user's (which win)."""
    return [*common, SIZING[name], *args.overrides]


def story(args, out: Path, uri: str, data: Path, common: list, parent: Tracker) -> int:
    """The demo's six steps; every stage run nested under `parent` (one MLflow experiment)."""
    progress = not args.quiet
    t0 = time.time()
    children = StudyChildren(parent)

    banner(1, "simulate exam folders (PNG + DICOM + JPEG, colour Doppler, burned-in text)")
    print(format_summary(simulate(out / "exams", SimulateConfig(exams=args.exams, size=96, format="mixed",
                                                                 seed=0), progress=False)))

    banner(2, "ingest: decode, drop colour Doppler, crop the scan sector, cache 64 px, split by patient")
    icfg = load_config(IngestStageConfig, CONFIGS / "ingest_demo.yaml")
    res = ingest(out / "exams", data, out / "exams" / "labels.csv", icfg.ingest, progress=progress)
    print(f"kept {res.n_frames_kept} frames from {res.n_files_kept}/{res.n_files} files; "
          f"{res.n_files_skipped} files skipped, each with its reason in {res.report.name}")
    print(split_summary(split_dataset(data, icfg.split)))

    banner(3, "pretrain LSD deep clustering on the unlabelled exams, then evaluate the clusters")
    lsd = pretrain(load_config(PretrainConfig, CONFIGS / "pretrain_lsd_demo.yaml",
                               [*stage_overrides("pretrain_lsd_demo", common, args),
                                {"out": out / "pretrain_lsd", "evaluate_after": False}]), tracking_uri=uri,
                   parent_run_id=parent.run_id)
    ev = evaluate(load_config(EvaluateConfig, CONFIGS / "evaluate.yaml",
                              [{"model": lsd, "data.path": data, "out": out / "evaluate_lsd",
                                "experiment": EXPERIMENT}]),
                  tracking_uri=uri, progress=progress, parent_run_id=parent.run_id)
    children.tag_new({"strategy": "pretrain-lsd"})

    banner(4, f"supervised fine-tuning and two-head FixMatch from the LSD weights at {args.fractions} labels")
    rows = []
    for frac in args.fractions:
        for name, stage, cls, cfg_name in (("supervised", finetune, FinetuneConfig, "finetune_demo"),
                                           ("fixmatch-twohead", semisup, SemisupConfig, "semisup_demo")):
            run_out = out / f"{name}_f{frac:g}"
            cfg = load_config(cls, CONFIGS / f"{cfg_name}.yaml",
                              [*stage_overrides(cfg_name, common, args),
                               {"out": run_out, "label_fraction": frac, "model.init": lsd}])
            model = stage(cfg, tracking_uri=uri, parent_run_id=parent.run_id)
            children.tag_new({"strategy": name, "label_fraction": frac, "seed": 0})
            _, info = load_model_file(model)
            m = read_metrics(run_out)
            rows.append({"method": name, "init": "LSD", "label_fraction": frac, "seed": 0,
                         "val_f1": info.provenance.get("best_val_f1"), "f1": m["test/weighted_f1"], "model": str(model)})
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    plot_label_fraction_curves(runs, out / "label_fractions.png", "demo: test weighted F1 vs label fraction")
    log_fraction_curves(parent, runs)  # the parent's chart: test_f1/<strategy> over step = label %
    for f in ("runs.csv", "label_fractions.png"):
        parent.log_artifact(out / f)

    banner(5, "predict on a held-out folder of new exams (DICOM), with the best model on validation")
    best = runs.sort_values("val_f1", ascending=False, na_position="last").iloc[0]
    simulate(out / "new_exams", SimulateConfig(exams=4, size=96, format="dicom", seed=99), progress=False)
    pred = predict(best["model"], out / "new_exams", out / "predictions.csv", progress=progress)
    inv = pd.read_csv(pred.exams)
    print(f"{pred.n_predicted} frames predicted, {pred.n_skipped} files skipped with a reason -> {pred.out}")
    print(inv[["exam_id", "n_frames", "organs"]].fillna("-").to_string(index=False))

    banner(6, f"report: {best['method']} from LSD at {best['label_fraction']:g} labels (best on validation)")
    report = pd.read_csv(Path(best["model"]).parent / "eval" / "report.csv", index_col="class")
    print(format_report(report, "test set, thresholds chosen per class on validation (cf. paper Table 2)"))
    print("\nall runs (test weighted F1; model selection used validation only):")
    print(runs[["method", "init", "label_fraction", "val_f1", "f1"]].to_string(index=False, float_format="%.3f"))
    print(f"\ndone in {(time.time() - t0) / 60:.1f} min. Simulated data: a smoke test, not clinical results.")
    print(f"cluster t-SNE:   {ev['out'] / 'figures' / 'tsne.png'}")
    print(f"cluster gallery: {ev['out'] / 'gallery' / 'gallery.html'}")
    print(f"label fractions: {out / 'label_fractions.png'}")
    print(f"predictions:     {pred.out} and {pred.exams}")
    print(f"pseudo-labels:   {out / f'fixmatch-twohead_f{args.fractions[0]:g}' / 'diagnostics' / 'pseudo_labels.png'}")
    print(f"MLflow DB:       {out / 'mlflow.db'}")
    print(f"browse runs:     .venv/bin/mlflow ui --backend-store-uri {uri}")
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("demo"))
