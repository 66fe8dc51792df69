"""`make demo`: the whole usclf story on simulated exams, sized for a 2-core CPU.

simulate -> ingest (+ patient-disjoint split) -> pretrain LSD -> evaluate clusters (report, t-SNE, gallery)
Everything lands in --out; runs are tracked in the embedded MLflow DB (sqlite) inside --out.
Results on simulated data are a smoke test of the machinery, never clinical results.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usclf.config import load_config  # noqa: E402
from usclf.data.simulate import SimulateConfig, format_summary, simulate  # noqa: E402
from usclf.data.splits import split_dataset  # noqa: E402
from usclf.stages.cli_data import IngestStageConfig, split_summary  # noqa: E402
from usclf.data.ingest import ingest  # noqa: E402
from usclf.stages.evaluate import EvaluateConfig, evaluate  # noqa: E402
from usclf.stages.pretrain import PretrainConfig, pretrain  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 90 - len(text)), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (recreated)")
    p.add_argument("--exams", type=int, default=160, help="simulated exams (default 160, ~1900 frames)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the demo config's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    progress = not args.quiet
    t0 = time.time()

    banner("1/4 simulate exam folders (PNG + DICOM + JPEG, colour Doppler, burned-in text)")
    summary = simulate(out / "exams", SimulateConfig(exams=args.exams, size=96, format="mixed", seed=0),
                       progress=False)
    print(format_summary(summary))

    banner("2/4 ingest: decode, drop colour Doppler, crop the scan sector, cache 64 px, split by patient")
    icfg = load_config(IngestStageConfig, CONFIGS / "ingest_demo.yaml")
    res = ingest(out / "exams", out / "dataset", out / "exams" / "labels.csv", icfg.ingest, progress=progress)
    print(f"kept {res.n_frames_kept} frames from {res.n_files_kept}/{res.n_files} files; "
          f"{res.n_files_skipped} files skipped with a reason in {res.report.name}")
    df = split_dataset(out / "dataset", icfg.split)
    print(split_summary(df))

    banner("3/4 pretrain LSD deep clustering on the unlabelled exams")
    over = [f"data.path={out / 'dataset'}", f"out={out / 'pretrain_lsd'}", f"train.progress={progress}",
            "evaluate_after=false"]  # evaluated explicitly in step 4
    if args.epochs:
        over.append(f"train.epochs={args.epochs}")
    model = pretrain(load_config(PretrainConfig, CONFIGS / "pretrain_lsd_demo.yaml", over), tracking_uri=uri)

    banner("4/4 evaluate clusters: Algorithm 1 matching + thresholds on val, report on test")
    ev = evaluate(load_config(EvaluateConfig, CONFIGS / "evaluate.yaml",
                              [f"model={model}", f"data.path={out / 'dataset'}", f"out={out / 'evaluate_lsd'}"]),
                  tracking_uri=uri, progress=progress)

    banner(f"done in {(time.time() - t0) / 60:.1f} min")
    print(f"figures:  {ev['out'] / 'figures'}  (tsne.png, per_class_f1.png)")
    print(f"gallery:  {ev['out'] / 'gallery' / 'gallery.html'}")
    print(f"MLflow:   {out / 'mlflow.db'}  ->  .venv/bin/mlflow ui --backend-store-uri {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
