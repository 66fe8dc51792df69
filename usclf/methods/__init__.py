"""Training-method registry: `name -> class`, one module per method (docs/design.md §2).

Every method follows one protocol (base.py): it owns its options (a dataclass, the `options:` section of the
stage config, validated on load), its Trainer step and any state that must be checkpointed; a semi-supervised
method also the model head it needs, a clustering method its loss. The catalogue (configs/methods.yaml: class,
help line, one help line per option) is import-light so `--help` can list it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UsclfError

REGISTRY_FILE = Path(__file__).resolve().parents[2] / "configs" / "methods.yaml"


def _load_registry(path: Path = REGISTRY_FILE) -> dict[str, dict[str, tuple[str, str, dict[str, str]]]]:
    """{family: {name: ("module:Class", help line, {option: help line})}} from configs/methods.yaml, in file order."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsclfError(f"cannot read the method registry {path}: {e}") from e
    tables: dict[str, dict[str, tuple[str, str, dict[str, str]]]] = {}
    for family in ("semisup", "pretrain", "finetune", "baseline"):
        entries = (raw or {}).get(family) or {}
        for name, spec in entries.items():
            if not isinstance(spec, dict) or ":" not in str(spec.get("class", "")):
                raise UsclfError(f"{path}: {family}.{name} needs `class: module:Class` and `help:`")
            if not isinstance(spec.get("options") or {}, dict):
                raise UsclfError(f"{path}: {family}.{name}.options must map each option to its help line")
        tables[family] = {str(n): (str(s["class"]), str(s.get("help", "")),
                                   {str(o): str(h) for o, h in (s.get("options") or {}).items()})
                          for n, s in entries.items()}
    return tables


_TABLES = _load_registry()
SEMISUP, PRETRAIN, FINETUNE, BASELINE = (_TABLES[f] for f in ("semisup", "pretrain", "finetune", "baseline"))


def method_class(kind: str, name: str):
    """The registered class for `name` of `kind` ('semisup' | 'pretrain' | 'finetune' | 'baseline'); one-line
    error when unknown."""
    table = _TABLES[kind]
    if name not in table:
        raise UsclfError(f"unknown {kind} method '{name}'; valid: {', '.join(table)}")
    module, cls = table[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def option_help(kind: str, name: str) -> dict[str, str]:
    """{option: help line} of a registered method (configs/methods.yaml); {} when it has no options."""
    return dict(_TABLES[kind][name][2]) if name in _TABLES[kind] else {}


def help_text(kind: str) -> str:
    """'name: description [options.X: help, ...]; ...' for a `--method` help string."""
    def one(n: str, d: str, opts: dict[str, str]) -> str:
        return f"{n}: {d}" + (" [" + "; ".join(f"options.{o}: {h}" for o, h in opts.items()) + "]" if opts else "")
    return "; ".join(one(n, d, o) for n, (_, d, o) in _TABLES[kind].items())
