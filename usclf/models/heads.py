"""Heads on top of the feature extractor, the `Classifier` that joins them, and self-describing specs.

- `ClusterHead(in, K)`: linear + softmax -> N x K probabilities (PICA/LSD take probabilities).
- `MultiLabelHead(in, C)`: linear -> N x C logits (sigmoid/BCE outside).
- `TwoHead(in, K_combo, C)`: (combination logits, multi-label logits) on the same features (Sec. 2.3.2 ii).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UsclfError
from .backbone import backbone_in_chans, build_backbone


def _positive(name: str, v: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UsclfError(f"{name} must be a positive integer, got {v!r}")
    return v


class ClusterHead(nn.Module):
    """Linear layer + softmax: cluster-assignment probabilities."""
    kind = "cluster"

    def __init__(self, in_features: int, num_clusters: int):
        super().__init__()
        self.in_features = _positive("in_features", in_features)
        self.num_clusters = _positive("num_clusters", num_clusters)
        self.fc = nn.Linear(in_features, num_clusters)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(f).float(), dim=1)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "in_features": self.in_features, "num_clusters": self.num_clusters}


class MultiLabelHead(nn.Module):
    """Linear layer: one logit per class (C organs + other)."""
    kind = "multilabel"

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features = _positive("in_features", in_features)
        self.num_classes = _positive("num_classes", num_classes)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "in_features": self.in_features, "num_classes": self.num_classes}


class TwoHead(nn.Module):
    """Softmax head over label combinations + sigmoid head over classes; returns both logit sets."""
    kind = "twohead"

    def __init__(self, in_features: int, num_combos: int, num_classes: int):
        super().__init__()
        self.in_features = _positive("in_features", in_features)
        self.num_combos = _positive("num_combos", num_combos)
        self.num_classes = _positive("num_classes", num_classes)
        self.combo = nn.Linear(in_features, num_combos)
        self.multilabel = nn.Linear(in_features, num_classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.combo(f), self.multilabel(f)

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "in_features": self.in_features, "num_combos": self.num_combos,
                "num_classes": self.num_classes}


HEADS: dict[str, type[nn.Module]] = {c.kind: c for c in (ClusterHead, MultiLabelHead, TwoHead)}


def make_head(spec: dict[str, Any]) -> nn.Module:
    """Head from its spec dict ({'type': ..., 'in_features': ..., sizes})."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in HEADS:
        raise UsclfError(f"unknown head type {kind!r}; valid: {', '.join(HEADS)}")
    try:
        return HEADS[kind](**spec)
    except TypeError:
        raise UsclfError(f"head spec {dict(type=kind, **spec)} does not match head '{kind}'") from None


class Classifier(nn.Module):
    """Feature extractor + head: `features(x)` gives f(x), `forward(x)` the head's output."""

    def __init__(self, backbone: nn.Module, head: nn.Module, backbone_name: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        self.backbone_name = backbone_name or cfg.get("architecture") or type(backbone).__name__
        nf = getattr(backbone, "num_features", None)
        if nf is not None and getattr(head, "in_features", nf) != nf:
            raise UsclfError(f"head expects {head.in_features} features but backbone "
                             f"{self.backbone_name} gives {nf}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor):
        return self.head(self.backbone(x))

    def spec(self) -> dict[str, Any]:
        """The architecture description stored in checkpoints and model files (see `model_spec`)."""
        return model_spec(self)


def build_classifier(backbone: str = "resnet18", head: str = "multilabel", in_chans: int = 1,
                     init: str = "random", imagenet_weights: str | None = None, **sizes: int) -> Classifier:
    """Backbone (see `build_backbone`) + a new head of type `head` with the given sizes."""
    f = build_backbone(backbone, in_chans=in_chans, init=init, imagenet_weights=imagenet_weights)
    return Classifier(f, make_head({"type": head, "in_features": int(f.num_features), **sizes}), backbone)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """Self-describing architecture of a Classifier (backbone name, input channels, head type/sizes)."""
    model = getattr(model, "module", model)  # DDP-wrapped
    if not isinstance(model, Classifier) or not hasattr(model.head, "spec"):
        raise UsclfError(f"cannot describe a {type(model).__name__}: only usclf Classifier models have a spec")
    return {"backbone": model.backbone_name, "in_chans": backbone_in_chans(model.backbone),
            "head": model.head.spec()}


def build_from_spec(spec: dict[str, Any]) -> Classifier:
    """Randomly initialised Classifier of the architecture in `spec` (weights are loaded by the caller)."""
    if not isinstance(spec, dict) or not {"backbone", "head"} <= set(spec):
        raise UsclfError(f"model spec must hold 'backbone' and 'head', got {spec!r}"[:300])
    f = build_backbone(spec["backbone"], in_chans=int(spec.get("in_chans", 1)), init="random")
    return Classifier(f, make_head(spec["head"]), spec["backbone"])
