"""The method protocol every training family follows (docs/architecture.md, "Adding a method").

A method is an object built from its options and called by the Trainer as its step:

- `Options`: a dataclass; the stage config's `options:` mapping (or `options.NAME=VALUE` overrides) is
  validated against it (unknown keys and wrong types are one-line errors), then `check_options` rejects
  values that cannot work. Its one-line help per option is in the method's section of configs/methods.yaml.
- `__call__(model, batch, ctx) -> (loss, metrics)`: the Trainer's step.
- `state_dict()` / `load_state_dict(sd)`: whatever must survive a kill-and-resume (running thresholds,
  per-image status); the Trainer saves it in every checkpoint and restores it on `--resume`.

Families add their own base on top: `semisup_base.SemisupMethod`, `clustering.ClusteringMethod`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..config import from_dict


@dataclass
class NoOptions:
    """This method has no options of its own."""


class Method:
    """Base class; see the module doc."""
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: dict | None = None):
        self.options = from_dict(self.Options, dict(options or {}), prefix="options.")
        self.check_options()

    def check_options(self) -> None:
        """One-line errors for option values that cannot work."""

    def options_dict(self) -> dict[str, Any]:
        """Every option with its value, defaults filled in (what a run records)."""
        return asdict(self.options)

    def __call__(self, model, batch, ctx):
        """The Trainer's step: (loss, {name: metric})."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
