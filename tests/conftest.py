"""Shared fixtures: a migrated MLflow sqlite DB copied per test, small thread counts for 2-core CI."""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory) -> Path:
    """Create one MLflow sqlite DB (schema migration costs ~7 s) for the whole session."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def _tracking_outside_the_repo(tmp_path_factory, monkeypatch) -> None:
    """A test that forgets `mlflow_uri` must not write ./mlflow.db into the checkout (a fresh clone has none,
    so MLflow's first-use INFO lines would then appear only on CI); it gets a shared sandbox DB instead."""
    if "MLFLOW_TRACKING_URI" not in os.environ or os.environ["MLFLOW_TRACKING_URI"].endswith("/stray.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.getbasetemp() / 'stray.db'}")


@pytest.fixture
def mlflow_uri(_migrated_mlflow_db, tmp_path, monkeypatch) -> str:
    """A fresh, already-migrated sqlite tracking URI in this test's tmp dir (artifacts in tmp/mlruns)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def simulated_dataset(root: Path, exams: int, seed: int, fractions=(0.4, 0.2, 0.2, 0.2), raw_size: int = 48,
                      size: int = 32) -> Path:
    """Simulate `exams` exams and ingest + split them through the real CLI; returns the dataset folder."""
    from usclf.cli import main

    raw, ds = root / "raw", root / "ds"
    assert main(["simulate", "--exams", str(exams), "--out", str(raw), "--frame-size", str(raw_size), "--seed",
                 str(seed), "--quiet"]) == 0
    splits = [f"split.{k}={v}" for k, v in zip(("unlabeled", "train", "val", "test"), fractions)]
    assert main(["ingest", str(raw), "--out", str(ds), "--labels", str(raw / "labels.csv"), "--size", str(size),
                 "--quiet", *splits]) == 0
    return ds


def shared_data(*parts: str) -> Path:
    """A file of the public benchmark sets in ../shared/data (beside the repo; /work/shared on dev machines)."""
    for base in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")):
        if (base.joinpath(*parts)).is_file():
            return base.joinpath(*parts)
    return Path("/work/shared/data").joinpath(*parts)


@contextmanager
def tmpfs_mount(path: Path, options: str, what: str):
    """A real tmpfs mounted at `path` with `options` (skips the test where mounting needs root we lack)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount {what} here ({r.stderr.strip()[:80]}): needs root")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def tiny_disk(path: Path, kb: int):
    """A real `kb` kB tmpfs at `path` for full-disk tests."""
    return tmpfs_mount(path, f"size={kb}k", f"a {kb} kB tmpfs")


def read_only_dir(path: Path):
    """A real read-only file system at `path` (a ro tmpfs; root's chmod would not stop root)."""
    return tmpfs_mount(path, "ro,size=64k", "a read-only tmpfs")


def calibrated(model, images, size: int = 32):
    """An untrained timm ResNet gives the same output for every image; BN statistics from the data (and
    unit BN gains) make outputs depend on the image, so a preprocessing mismatch cannot go unnoticed."""
    import numpy as np
    import torch

    from usclf.data.transforms import AugmentConfig, build_transform

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.weight.data.fill_(1.0)
    t = build_transform("eval", AugmentConfig(size=size))
    with torch.no_grad():
        model.train()(torch.from_numpy(np.stack([t(im) for im in images]))[:, None])
    return model.eval()
