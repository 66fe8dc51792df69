"""The MLflow model registry: register an exported usclf model; the alias `champion` follows validation F1.

`models:/NAME@champion` always names the registered version with the best validation weighted F1 (the
`best_val_f1` the trainer recorded in the model file; never a test number). The comparison uses the F1 as the
model file holds it (the version tag `val_f1` keeps every digit): a tie, or a second registration of the same
model file (same sha1), never moves the alias. A version without a validation F1 (e.g. a pretrain clustering
model) is registered but never promoted over one that has it. Every version of one name predicts the same
classes, in the same order: a model with another class list is refused before anything is written.

`check_registry` runs before the export is written (name, alias, a reachable store, the class list);
`register_model` runs before the export is renamed into place. Writers of one sqlite store are serialised
(`usclf.locks.store_lock`), so two first registrations into a fresh DB both land.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UsclfError
from ..locks import store_lock
from ..models.modelfile import read_model_info
from ..tracking import default_tracking_uri

ALIAS = "champion"
EXPERIMENT = "usclf-export"
CONNECT_TIMEOUT = 5.0


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


def _usclf_tag(mv) -> dict:
    try:
        d = json.loads(mv.tags.get("usclf", "{}"))
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def _one_line(uri: str, e: Exception) -> UsclfError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UsclfError(f"MLflow registry at {uri}: {first[:200]}")


def check_name(name: str, alias: str) -> None:
    """A registered model name and alias MLflow accepts (and that are not MLflow's reserved aliases)."""
    if not name or not name.strip() or name != name.strip() or any(c in name for c in "/@:'\"\\"):
        raise UsclfError(f"--register {name!r}: a registered model name must be non-empty, without surrounding "
                         "spaces, '/', '@', ':', quotes or backslashes")
    if not alias or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias) \
            or not re.fullmatch(r"[\w\-]+", alias):
        raise UsclfError(f"--alias {alias!r}: MLflow reserves 'latest' and 'v<number>'; use letters, digits, "
                         "'_' or '-' (e.g. champion)")


def check_reachable(uri: str) -> None:
    """An http(s) tracking server must answer a TCP connect within seconds (MLflow itself retries for minutes)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")   # bounded waits after this check, too
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT).close()
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise UsclfError(f"tracking server {uri} is not reachable: {why}; nothing exported") from None


def check_registry(name: str, alias: str, tracking_uri: str | None, model_path: str | Path) -> None:
    """Everything `register_model` could refuse, checked before the export is written."""
    check_name(name, alias)
    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    classes = list(read_model_info(model_path).classes)
    from mlflow import MlflowClient
    with store_lock(uri):
        try:
            known = _registered_classes(MlflowClient(uri), name)
        except UsclfError:
            raise
        except Exception as e:  # MLflow raises many types (DB, network): one line
            raise _one_line(uri, e) from None
    _same_classes(model_path, classes, name, known)


def _registered_classes(client, name: str) -> list | None:
    """The class list of the newest version of `name` that records one; None for a new name."""
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
        c = _usclf_tag(mv).get("classes")
        if c is not None:
            return list(c)
    return None


def _same_classes(model_path, classes: list, name: str, known: list | None) -> None:
    if known is not None and known != classes:
        raise UsclfError(f"{model_path} predicts {len(classes)} classes ({', '.join(map(str, classes))}) but "
                         f"registered model {name} predicts {len(known)} ({', '.join(map(str, known))}): register "
                         "it under another name")


def register_model(model_path: str | Path, name: str, meta: dict, tracking_uri: str | None = None,
                   alias: str = ALIAS) -> Registered:
    """Log the pyfunc model of `model_path` in an MLflow run, register it as a new version of `name`, and move
    `alias` to it when its validation F1 beats the current holder's (or nobody holds the alias yet)."""
    check_name(name, alias)
    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    with store_lock(uri):
        try:
            return _register(model_path, name, meta, uri, alias)
        except UsclfError:
            raise
        except Exception as e:  # MLflow raises many types (DB, network): one line
            raise _one_line(uri, e) from None


def _register(model_path, name: str, meta: dict, uri: str, alias: str) -> Registered:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ..tracking import experiment_id
    from .pyfunc import pyfunc_kwargs

    client = MlflowClient(uri)
    _same_classes(model_path, list(meta["classes"]), name, _registered_classes(client, name))
    f1 = model_val_f1(model_path)
    mlflow.set_tracking_uri(uri)
    exp = experiment_id(client, uri, EXPERIMENT)     # artifacts beside a sqlite DB, as for training runs
    with mlflow.start_run(run_name=f"export {name}", experiment_id=exp):
        mlflow.log_params({"model_sha1": meta["model_sha1"], "method": meta["method"], "stage": meta["stage"]})
        if not math.isnan(f1):
            mlflow.log_metric("val_weighted_f1", f1)
        info = mlflow.pyfunc.log_model(name="model", registered_model_name=name, **pyfunc_kwargs(model_path, meta))
    version = int(info.registered_model_version)
    client.set_model_version_tag(name, str(version), "val_f1", "nan" if math.isnan(f1) else repr(f1))
    client.set_model_version_tag(name, str(version), "usclf", json.dumps(
        {k: meta[k] for k in ("method", "stage", "model_sha1", "classes")}))
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    old = _f1_tag(holder) if holder is not None else math.nan
    same = holder is not None and _usclf_tag(holder).get("model_sha1") == meta["model_sha1"]
    promote = holder is None or (not same and not math.isnan(f1) and (math.isnan(old) or f1 > old))
    if promote:
        client.set_registered_model_alias(name, alias, str(version))
    return Registered(name, version, f1, version if promote else int(holder.version), promote)
