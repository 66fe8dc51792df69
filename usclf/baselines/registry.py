"""The baseline registry: name -> class. Each class validates its own config section(s) on construction
and turns images into soft cluster assignments plus the features it clustered."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsclfError
from .config import METHODS, BaselineConfig

BASELINES: dict[str, type["Baseline"]] = {}


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
    """Base class: subclasses set `name`, `summary` and implement `fit`."""
    name = ""
    summary = ""

    def __init__(self, cfg: BaselineConfig):
        self.cfg = cfg
        self.validate()

    def validate(self) -> None:
        """Raise UsclfError for settings this method cannot use."""

    def check(self, images: np.ndarray, k: int) -> None:
        """Raise UsclfError when these images or this K cannot work (called before any run is logged)."""

    def fit(self, images: np.ndarray, ctx: FitContext) -> Assignment:  # pragma: no cover - abstract
        raise NotImplementedError


def register(cls: type[Baseline]) -> type[Baseline]:
    if cls.name in BASELINES or cls.name not in METHODS:
        raise ValueError(f"baseline {cls.name}: registered twice or missing from config.METHODS")
    cls.summary = METHODS[cls.name]
    BASELINES[cls.name] = cls
    return cls


def get_baseline(cfg: BaselineConfig) -> Baseline:
    """The configured baseline, validated."""
    for module in ("dec", "dcec", "deepcluster", "features"):  # importing them registers the methods
        importlib.import_module(f"{__package__}.{module}")

    if cfg.method not in BASELINES:
        raise UsclfError(f"unknown baseline '{cfg.method}'; valid: {', '.join(sorted(BASELINES))}")
    return BASELINES[cfg.method](cfg)


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    P = np.zeros((len(labels), k), dtype=np.float32)
    P[np.arange(len(labels)), labels] = 1.0
    return P


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if v is None or v <= 0:
            raise UsclfError(f"baseline: {name} must be > 0, got {v}")
