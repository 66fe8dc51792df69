"""MLflow tracking wrapper (docs/design.md §7): one run per stage, nested runs for studies, no-op off rank 0.

Default store: env `MLFLOW_TRACKING_URI`, else an embedded `sqlite:///<cwd>/mlflow.db`. With a sqlite
store, artifacts go to `mlruns/` beside the DB file, never elsewhere.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import UsclfError
from .paths import sqlite_path

try:  # limits of the installed MLflow; the fallbacks are MLflow 2.x values
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, \
        MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH
except ImportError:  # pragma: no cover - depends on the MLflow version
    MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH = \
        500, 5000, 100, 1000

PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else an sqlite DB `mlflow.db` in the current directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_BAD_KEY_CHARS = re.compile(r"[^\w\-. :/]")


def mlflow_key(name: Any) -> str:
    """A param/metric name MLflow accepts: characters it refuses (e.g. '+') become '_' ('a+ema' -> 'a_ema')."""
    return _BAD_KEY_CHARS.sub("_", str(name))


def flatten_params(params: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts / dataclasses -> {'a.b.c': 'value'}, values stringified and truncated to MLflow's limit."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    out: dict[str, str] = {}
    if isinstance(params, dict):
        for k, v in params.items():
            k = mlflow_key(k)
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) or (dataclasses.is_dataclass(v) and not isinstance(v, type)):
                out.update(flatten_params(v, key))
            else:
                out[key] = str(v)[:MAX_PARAM_VAL_LENGTH]
        return out
    if prefix:
        return {prefix: str(params)[:MAX_PARAM_VAL_LENGTH]}
    raise UsclfError(f"params must be a mapping or dataclass, got {type(params).__name__}")


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def experiment_id(client, uri: str, experiment: str) -> str:
    """The id of `experiment`, created if needed; with a sqlite store its artifacts go beside the DB."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(uri)
    location = None
    if db is not None:  # keep artifacts beside the DB, not in the current directory
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment) or "experiment"
        location = (db.resolve().parent / "mlruns" / folder).as_uri()
    return client.create_experiment(experiment, artifact_location=location)


class Tracker:
    """One MLflow run as a context manager; with `enabled=False` every call is a no-op."""

    def __init__(self, uri: str | None = None, experiment: str = "usclf", run_name: str | None = None,
                 params: Any = None, tags: dict[str, Any] | None = None, parent_run_id: str | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.uri = uri or default_tracking_uri()
        self.experiment, self.run_name = experiment, run_name
        self._params, self._tags, self.parent_run_id = params, dict(tags or {}), parent_run_id
        self.run_id: str | None = None
        self._client = None

    # ---------------------------------------------------------------- lifecycle
    def _experiment_id(self) -> str:
        if self.parent_run_id:  # MLflow nests runs of one experiment only: a child follows its parent
            return self._client.get_run(self.parent_run_id).info.experiment_id
        return experiment_id(self._client, self.uri, self.experiment)

    def start(self) -> "Tracker":
        """Create the run (called by `with Tracker(...)`)."""
        if not self.enabled or self.run_id is not None:
            return self
        from mlflow.tracking import MlflowClient
        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        from .locks import store_lock
        try:
            with store_lock(self.uri):  # two first runs never create/migrate one sqlite DB at once
                self._client = MlflowClient(tracking_uri=self.uri)
                tags = {str(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in self._tags.items()}
                if self.parent_run_id:
                    tags[PARENT_TAG] = self.parent_run_id
                run = self._client.create_run(self._experiment_id(), tags=tags, run_name=self.run_name)
        except UsclfError:
            raise
        except Exception as e:  # MLflow raises many types (DB, network); one line for the user
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsclfError(f"cannot start an MLflow run at {self.uri}: {first[:200]}") from None
        self.run_id = run.info.run_id
        if self._params is not None:
            self.log_params(self._params)
        return self

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with status FINISHED / FAILED / KILLED."""
        if self.enabled and self.run_id is not None and self._client is not None:
            self._client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "Tracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        self.end(status)

    # ---------------------------------------------------------------- logging
    def _check(self) -> bool:
        if not self.enabled:
            return False
        if self.run_id is None:
            raise UsclfError("tracker used before its run was started (use `with Tracker(...)`)")
        return True

    def log_params(self, params: Any) -> None:
        """Log (nested) params under flattened dotted keys."""
        if not self._check():
            return
        from mlflow.entities import Param
        flat = flatten_params(params)
        for chunk in _chunks(list(flat.items()), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (floats or 0-d tensors) at `step`; non-numeric values are rejected."""
        if not self._check():
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        rows = []
        for k, v in metrics.items():
            try:
                val = float(v.item() if hasattr(v, "item") else v)
            except (TypeError, ValueError):
                raise UsclfError(f"metric '{k}' is not a number: {v!r}"[:200]) from None
            rows.append(Metric(mlflow_key(k), val, now, int(step or 0)))
        for chunk in _chunks(rows, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self._check():
            return
        from mlflow.entities import RunTag
        items = [RunTag(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts."""
        if not self._check():
            return
        p = Path(path)
        if not p.is_file():
            raise UsclfError(f"artifact not found: {p}")
        self._client.log_artifact(self.run_id, str(p), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Copy a folder's contents into the run's artifacts."""
        if not self._check():
            return
        d = Path(directory)
        if not d.is_dir():
            raise UsclfError(f"artifact folder not found: {d}")
        self._client.log_artifacts(self.run_id, str(d), artifact_path)

    def artifact_uri(self) -> str | None:
        """Where this run's artifacts live (None when disabled)."""
        if not self._check():
            return None
        return self._client.get_run(self.run_id).info.artifact_uri
