"""The MLflow model registry: register an exported usclf model; the alias `champion` follows validation F1.

`models:/NAME@champion` always names the registered version with the best validation weighted F1 (the
`best_val_f1` the trainer recorded in the model file; never a test number). A version without a validation
F1 (e.g. a pretrain clustering model) is registered but never promoted over one that has it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsclfError
from ..models.modelfile import read_model_info
from ..tracking import default_tracking_uri

ALIAS = "champion"


@dataclass
class Registered:
    name: str
    version: int
    val_f1: float             # NaN when the model file records none
    champion: int             # the version the alias names after this registration
    promoted: bool            # this version became the champion


def model_val_f1(model_path: str | Path) -> float:
    v = read_model_info(model_path).provenance.get("best_val_f1")
    return float(v) if v is not None else math.nan


def _f1_tag(mv) -> float:
    try:
        return float(mv.tags.get("val_f1", "nan"))
    except ValueError:
        return math.nan


def register_model(model_path: str | Path, name: str, meta: dict, tracking_uri: str | None = None,
                   alias: str = ALIAS) -> Registered:
    """Log the pyfunc model of `model_path` in an MLflow run, register it as a new version of `name`, and move
    `alias` to it when its validation F1 beats the current holder's (or nobody holds the alias yet)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from .pyfunc import pyfunc_kwargs

    if not name or any(c in name for c in "/@:"):
        raise UsclfError(f"registered model name {name!r} must be non-empty without '/', '@' or ':'")
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    f1 = model_val_f1(model_path)
    mlflow.set_experiment("usclf-export")
    with mlflow.start_run(run_name=f"export {name}"):
        mlflow.log_params({"model_sha1": meta["model_sha1"], "method": meta["method"], "stage": meta["stage"]})
        if not math.isnan(f1):
            mlflow.log_metric("val_weighted_f1", f1)
        info = mlflow.pyfunc.log_model(name="model", registered_model_name=name, **pyfunc_kwargs(model_path, meta))
    version = int(info.registered_model_version)
    client.set_model_version_tag(name, str(version), "val_f1", "nan" if math.isnan(f1) else f"{f1:.6f}")
    client.set_model_version_tag(name, str(version), "usclf", json.dumps({k: meta[k] for k in ("method", "stage",
                                                                                                "model_sha1")}))
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    old = _f1_tag(holder) if holder is not None else math.nan
    promote = holder is None or (not math.isnan(f1) and (math.isnan(old) or f1 > old))
    if promote:
        client.set_registered_model_alias(name, alias, str(version))
    return Registered(name, version, f1, version if promote else int(holder.version), promote)
