"""A training stage's output folder: checked, and on `--resume` the run's own settings, before anything is written.

A fresh run into a folder that holds an earlier run removes that run's derived outputs (model.pt, eval/,
diagnostics/) first, so nothing stale sits beside the new weights; its checkpoints are replaced by the
Trainer. `--resume` refuses a config that changes the run (method, lambda, backbone, data, ...): only the
keys in RESUME_MAY_CHANGE (how long it trains, how it reports, where it runs) may differ.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from ..config import dump_config, to_dict
from ..errors import UsclfError
from ..paths import check_out_dir

CONFIG = "config.yaml"
STALE = ("model.pt", "eval", "diagnostics")
RESUME_MAY_CHANGE = {
    "out", "experiment", "evaluate_after", "figures", "diagnostics", "labeled_epochs",
    "train.epochs", "train.max_steps", "train.progress", "train.log_every", "train.device",
    "train.ckpt_every", "train.ckpt_epochs", "data.workers",
}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; free mappings (a method's options) are flattened too."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key outside RESUME_MAY_CHANGE whose value differs."""
    a, b = flatten(old), flatten(new)
    missing = object()
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RESUME_MAY_CHANGE and a.get(k, missing) != b.get(k, missing)]


def read_moved_keys(old: dict, cls: type, new: dict) -> dict:
    """A config.yaml written before `cls` moved some keys (its MOVED_KEYS {old: new}, e.g. pretrain's `lam` ->
    `options.lam`) read with those keys at their new place, so `--resume` of such a run compares like with
    like; a moved key the new config does not hold (PICA's unused `epsilon`) is dropped."""
    moved = {k: v for k, v in getattr(cls, "MOVED_KEYS", {}).items() if k in old}
    if not moved:
        return old
    out, have = dict(old), flatten(new)
    for key, target in moved.items():
        value = out.pop(key)
        if target in have:
            *heads, last = target.split(".")
            node = out
            for h in heads:
                node[h] = dict(node.get(h) or {})
                node = node[h]
            node.setdefault(last, value)
    return out


def prepare_run_dir(cfg: Any, resume: bool) -> Path:
    """Check `cfg.out`, refuse a resume that changes the run, clear a previous run's outputs on a fresh
    start, then create the folder and write config.yaml (under DDP rank 0 alone calls it: stages/runner.py)."""
    out = check_out_dir(cfg.out)
    saved = out / CONFIG
    if resume and saved.is_file() and (out / "checkpoints" / "last.pt").is_file():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            raise UsclfError(f"{saved} is not readable YAML: cannot check that --resume continues the same run")
        new = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))  # as config.yaml holds it
        diff = changed_keys(read_moved_keys(old, type(cfg), new), new)
        if diff:
            k, a, b = diff[0]
            more = f" (and {len(diff) - 1} more: {', '.join(d[0] for d in diff[1:4])})" if len(diff) > 1 else ""
            raise UsclfError(f"--resume would change the run in {out}: {k} was {a!r}, now {b!r}{more}; "
                             "resume with the run's own settings or train into another --out")
    if not resume:
        for name in STALE:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, saved)
    return out
