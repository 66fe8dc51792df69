"""Shared fixtures: a migrated MLflow sqlite DB copied per test, small thread counts for 2-core CI."""
from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def mlflow_uri(_migrated_mlflow_db, tmp_path, monkeypatch) -> str:
    """A fresh, already-migrated sqlite tracking URI in this test's tmp dir (artifacts in tmp/mlruns)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
