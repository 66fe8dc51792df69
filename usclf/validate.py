"""Range checks for config values, raised as one-line UsclfErrors naming the config key."""
from __future__ import annotations

import math

from .errors import UsclfError


def positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise UsclfError(f"{key} must be > 0, got {value}")


def non_negative(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value < 0:
        raise UsclfError(f"{key} must be >= 0, got {value}")


def within(key: str, value: float, lo: float, hi: float, allow_none: bool = False) -> None:
    """lo <= value <= hi."""
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or not lo <= value <= hi:
        raise UsclfError(f"{key} must be within [{lo:g}, {hi:g}], got {value}")


def one_of(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UsclfError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
