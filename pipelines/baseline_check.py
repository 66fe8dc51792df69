"""Clustering baselines on BreastMNIST against paper 000 (Huang & Cui), Table 2.

    python pipelines/baseline_check.py --seeds 0 1 2 --out baseline_check_out

Protocol of the paper: all 780 images (train + val + test) clustered together, K = 2, clustering ACC
(Hungarian). The autoencoder is pretrained once per seed (400 epochs, Adam 3e-4, batch 256) and shared by
AE + k-means, DEC and IDEC; IDEC + graph pretrains its own with the graph term. Fixed-feature k-means rows
(PCA, HOG, LBP) have no number in paper 000 and are printed for reference. Runs are nested under one
MLflow parent; a table (mean, min, max over seeds next to the paper) goes to OUT/baseline_check.csv.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usclf.stages.baselines.config import AEConfig, BaselineConfig  # noqa: E402
from usclf.stages.baselines.run import baseline  # noqa: E402
from usclf.tracking import Tracker  # noqa: E402

PAPER_000_ACC = {"kmeans": 55.00, "ae-kmeans": 60.90, "dec": 62.05, "idec": 63.08, "idec-graph": 72.05}
EXPERIMENT = "usclf-baseline-check"
ORDER = ["kmeans", "pca-kmeans", "hog-kmeans", "lbp-kmeans", "ae-kmeans", "dec", "idec", "idec-graph"]


def run(out: Path, data: Path, seeds: list[int], methods: list[str] = ORDER, ae_epochs: int = 400,
        tracking_uri: str | None = None) -> pd.DataFrame:
    rows = []
    params = {"seeds": seeds, "methods": methods, "ae_epochs": ae_epochs}
    with Tracker(tracking_uri, EXPERIMENT, "breastmnist-table2", params) as parent:
        for seed in seeds:
            shared_ae = out / f"seed{seed}" / "ae-kmeans" / "autoencoder.pt"
            for m in methods:
                reuse = m in ("dec", "idec") and shared_ae.is_file()   # same AE as AE + k-means
                cfg = BaselineConfig(method=m, data=str(data), out=str(out / f"seed{seed}" / m), seed=seed,
                                     figures=False, progress=False, experiment=EXPERIMENT,
                                     ae=AEConfig(epochs=ae_epochs, weights=str(shared_ae) if reuse else None))
                met = baseline(cfg, tracking_uri=tracking_uri, parent_run_id=parent.run_id)["metrics"]
                rows.append({"method": m, "seed": seed, "acc": 100 * met["all/acc"], "nmi": met["all/nmi"],
                             "seconds": met["fit/seconds"]})
        df = pd.DataFrame(rows)
        table = df.groupby("method", sort=False).agg(acc_mean=("acc", "mean"), acc_min=("acc", "min"),
                                                     acc_max=("acc", "max"), nmi_mean=("nmi", "mean"),
                                                     seconds=("seconds", "mean"))
        table["paper_000_acc"] = [PAPER_000_ACC.get(m, float("nan")) for m in table.index]
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "baseline_check.csv")
        df.to_csv(out / "baseline_check_runs.csv", index=False)
        parent.log_artifact(out / "baseline_check.csv")
        parent.log_artifact(out / "baseline_check_runs.csv")
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "breastmnist" / "breastmnist.npz"
    p.add_argument("--data", default=str(default), help="breastmnist.npz (default: ../shared/data/breastmnist)")
    p.add_argument("--out", default="baseline_check_out", help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (k-means restarts, AE init, batches)")
    p.add_argument("--methods", nargs="+", default=ORDER, choices=ORDER, help="baselines to run")
    p.add_argument("--ae-epochs", type=int, default=400, help="autoencoder pretraining epochs (paper: 400)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    a = p.parse_args(argv)
    if not Path(a.data).is_file():
        print(f"baseline_check: error: {a.data} not found (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    table = run(Path(a.out), Path(a.data), a.seeds, a.methods, a.ae_epochs, a.tracking_uri)
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
