"""Training-method registry: `name -> class`, one module per method (docs/design.md §2).

A semi-supervised method owns its options (a dataclass, the `options:` section of the semisup config,
validated on load), the model head it needs, its step and any state that must be checkpointed.
A clustering method owns its loss. The catalogue below is import-light so `--help` can list it.
"""
from __future__ import annotations

import importlib

from ..errors import UsclfError

# name -> ("module:Class", one line for --help)
SEMISUP = {
    "fixmatch-onehead": ("usclf.methods.fixmatch:FixMatchOneHead",
                         "paper Sec. 2.3.2 i: sigmoid head, pseudo-label p >= 0.5 kept when max p >= tau"),
    "fixmatch-twohead": ("usclf.methods.fixmatch:FixMatchTwoHead",
                         "paper Sec. 2.3.2 ii: FixMatch on a softmax over label combinations + sigmoid head"),
    "fixmatch-twohead-ml": ("usclf.methods.fixmatch:FixMatchTwoHeadML",
                            "two heads; an accepted label set also trains the predicting sigmoid head (BCE, ours)"),
    "freematch-twohead": ("usclf.methods.freematch:FreeMatchTwoHead",
                          "two heads, FreeMatch self-adaptive global/per-combination thresholds (Wang et al. 2023)"),
    "fixmatch-da-twohead": ("usclf.methods.distalign:FixMatchDATwoHead",
                            "two heads, weak-view probabilities aligned to the labelled combination distribution "
                            "(ReMixMatch distribution alignment)"),
    "cap-onehead": ("usclf.methods.cap:CAPOneHead",
                    "one head, per-class thresholds that keep each class at its labelled share (CAP, NeurIPS 2023)"),
}
PRETRAIN = {
    "pica": ("usclf.methods.clustering:PICA", "PICA (Huang et al. 2020): cluster-assignment cosines + size entropy"),
    "lsd": ("usclf.methods.clustering:LSD", "PICA with the symmetric-Dirichlet cluster-size prior (paper Eqs. 5-7)"),
}
_TABLES = {"semisup": SEMISUP, "pretrain": PRETRAIN}


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
