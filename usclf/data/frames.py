"""What every decoder in `usclf.data` shares: the `Frame` / `Skip` records, the minimum frame side,
skip reasons, and the conversion of any pixel array to uint8.

`usclf.data.readers` (format sniffing, raster files) and `usclf.data.dicom_decode` (DICOM) both build
on this module and never on each other's internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Frames smaller than this on either side are icons, spacers or broken exports, not scans: the 5 px
# blur and closing of the scan-region crop degenerate there and resizing would only enlarge noise.
# Kept low so genuine small crops and thumbnails (>= 16 px) still pass.
MIN_SIDE = 16


@dataclass
class Frame:
    """One decoded frame: `array` is H x W or H x W x 3 uint8 (RGB)."""
    array: np.ndarray
    frame_index: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skip:
    """A file (frame_index None) or one frame that could not be used, with the reason."""
    reason: str
    frame_index: int | None = None


def error_reason(e: BaseException) -> str:
    """One-line skip reason for an unexpected exception: its type and first 200 characters."""
    msg = " ".join(str(e).split())[:200]
    return f"error: {type(e).__name__}: {msg}"


def too_small(width: int, height: int) -> str:
    return f"image too small ({width}x{height} px < {MIN_SIDE} px)"


def to_uint8(img: np.ndarray, bits: int = 16) -> np.ndarray:
    """uint16 -> scaled by a `bits`-bit full range (16: /257); float or other -> per-image min-max."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        scale = 255.0 / float((1 << bits) - 1)
        return np.clip(img.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
    return minmax_uint8(img)


def minmax_uint8(arr: np.ndarray) -> np.ndarray:
    """Linear rescale of any numeric array to 0..255 uint8 (constant arrays -> 0)."""
    a = arr.astype(np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
