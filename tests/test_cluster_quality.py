"""Slow: PICA and LSD pretraining give clearly better clusters than the same backbone untrained (64 px)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "cluster_check", Path(__file__).resolve().parents[1] / "pipelines" / "cluster_check.py")
cluster_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cluster_check)


@pytest.mark.slow
def test_pretraining_beats_untrained_backbone(tmp_path, mlflow_uri):
    # 64 px, 60 exams, 90 steps (~45 s per method). Measured over train seeds 0-3 on this setting:
    # PICA NMI 0.23-0.31 / wF1 0.50-0.53, LSD NMI 0.20-0.33 / wF1 0.48-0.53, untrained NMI 0 / wF1 0.445.
    # At 32 px the same budget was a coin toss (LSD NMI 0.00-0.09, wF1 below untrained), so CI failed there.
    df = cluster_check.run(tmp_path, exams=60, size=64, epochs=6, tracking_uri=mlflow_uri,
                           extra=["data.exams_per_batch=2"]).set_index("method")
    base = df.loc["untrained"]
    for m in ("pica", "lsd"):
        # the untrained model puts every image in one cluster (NMI 0); a collapsed training run does too
        assert df.loc[m, "nmi"] > base["nmi"] + 0.1, df
        # one cluster = the label prior for every image, which with per-class thresholds is an "all positive"
        # predictor: a strong matched-F1 baseline on imbalanced labels that a trained model must beat
        assert df.loc[m, "weighted_f1"] > base["weighted_f1"], df
