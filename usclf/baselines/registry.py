"""The baselines' protocol: a class registered in the one method registry (configs/methods.yaml, family
`baseline`) validates its config section(s) on construction and turns images into soft cluster assignments plus
the features it clustered; its training phases run in the shared Trainer with steps on the method protocol
(steps.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsclfError
from ..methods import BASELINE, method_class
from .config import BaselineConfig


@dataclass
class FitContext:
    """What a baseline's fit may need besides the images."""
    out: Path                   # working folder (checkpoints, autoencoder.pt)
    k: int                      # number of clusters
    seed: int
    device: Any = "cpu"
    tracker: Any = None         # open MLflow run for per-epoch metrics
    progress: bool = True
    resume: bool = False
    data: Any = None            # the CachedDataset (for methods that use the augmentation pipeline)
    rows: Any = None            # its manifest rows being clustered, in the order of `images`


@dataclass
class Assignment:
    P: np.ndarray               # N x K soft (or one-hot) cluster assignments
    features: np.ndarray        # N x D what was clustered (for t-SNE and silhouette)
    info: dict                  # scalars worth logging (steps, iterations, ...)


class Baseline:
    """Base class: subclasses set `name` (their registry key) and implement `fit`."""
    name = ""

    def __init__(self, cfg: BaselineConfig):
        self.cfg = cfg
        self.validate()

    def validate(self) -> None:
        """Raise UsclfError for settings this method cannot use."""

    def check(self, images: np.ndarray, k: int) -> None:
        """Raise UsclfError when these images or this K cannot work (called before any run is logged)."""

    def fit(self, images: np.ndarray, ctx: FitContext) -> Assignment:  # pragma: no cover - abstract
        raise NotImplementedError


def get_baseline(cfg: BaselineConfig) -> Baseline:
    """The configured baseline, validated; one-line error for a name the registry does not hold."""
    if cfg.method not in BASELINE:
        raise UsclfError(f"unknown baseline '{cfg.method}'; valid: {', '.join(sorted(BASELINE))}")
    return method_class("baseline", cfg.method)(cfg)


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    P = np.zeros((len(labels), k), dtype=np.float32)
    P[np.arange(len(labels)), labels] = 1.0
    return P


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if v is None or v <= 0:
            raise UsclfError(f"baseline: {name} must be > 0, got {v}")
