"""Training-method registry: `name -> class`, one module per method (docs/design.md §2).

A semi-supervised method owns its options (a dataclass, the `options:` section of the semisup config,
validated on load), the model head it needs, its step and any state that must be checkpointed.
A clustering method owns its loss. The catalogue (configs/methods.yaml) is import-light so `--help` can list it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UsclfError

REGISTRY_FILE = Path(__file__).resolve().parents[2] / "configs" / "methods.yaml"


def _load_registry(path: Path = REGISTRY_FILE) -> dict[str, dict[str, tuple[str, str]]]:
    """{family: {name: ("module:Class", help line)}} from configs/methods.yaml, in file order."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsclfError(f"cannot read the method registry {path}: {e}") from e
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    for family in ("semisup", "pretrain"):
        entries = (raw or {}).get(family) or {}
        for name, spec in entries.items():
            if not isinstance(spec, dict) or ":" not in str(spec.get("class", "")):
                raise UsclfError(f"{path}: {family}.{name} needs `class: module:Class` and `help:`")
        tables[family] = {str(n): (str(s["class"]), str(s.get("help", ""))) for n, s in entries.items()}
    return tables


_TABLES = _load_registry()
SEMISUP, PRETRAIN = _TABLES["semisup"], _TABLES["pretrain"]


def method_class(kind: str, name: str):
    """The registered class for `name` of `kind` ('semisup' | 'pretrain'); one-line error when unknown."""
    table = _TABLES[kind]
    if name not in table:
        raise UsclfError(f"unknown {kind} method '{name}'; valid: {', '.join(table)}")
    module, cls = table[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def help_text(kind: str) -> str:
    """'name: description; ...' for a `--method` help string."""
    return "; ".join(f"{n}: {d}" for n, (_, d) in _TABLES[kind].items())
