"""Obviously-correct scalar re-computations that loss tests check against."""
from __future__ import annotations

import math


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def bce(y: float, p: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def naive_ce(logits, target):
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))
