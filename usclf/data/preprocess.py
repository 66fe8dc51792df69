"""Frame clean-up for the cache: colour-Doppler detection, grey conversion, scan-region crop, resize.

`prepare_frame` is the one entry point used by ingest and the adapters: RGB/gray uint8 frame in,
`size x size` uint8 gray frame out, or None with a reason (colour Doppler, blank frame). A scan region
known from the file (DICOM ultrasound regions, see `usclf.data.readers`) is cropped to before the
image-content crop.
"""
from __future__ import annotations

import cv2
import numpy as np

from .frames import MIN_SIDE

RESIZE_MODES = ("pad", "stretch")


def coloured_fraction(rgb: np.ndarray, chroma: float) -> float:
    """Fraction of pixels whose max-min over the RGB channels exceeds `chroma`."""
    if rgb.ndim != 3 or rgb.size == 0:
        return 0.0
    r, g, b = cv2.split(np.ascontiguousarray(rgb[..., :3]))  # cv2 is ~20x faster than numpy axis-2 max/min
    spread = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    return float(np.count_nonzero(spread > chroma)) / spread.size


def to_gray(arr: np.ndarray, chroma: float = 40.0, fraction: float = 0.01,
            drop_doppler: bool = True) -> tuple[np.ndarray | None, str]:
    """Gray frame, or (None, reason) when the frame looks like colour Doppler (many coloured pixels)."""
    if arr.ndim == 2:
        return arr, ""
    if drop_doppler:
        frac = coloured_fraction(arr, chroma)
        if frac > fraction:
            return None, f"colour Doppler ({frac:.1%} coloured pixels > {fraction:.1%})"
    return cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2GRAY), ""


def scan_region_mask(gray: np.ndarray, threshold: int = 10, close_frac: float = 0.02,
                     min_area_frac: float = 0.05, piece_frac: float = 0.05,
                     work: int = 256) -> np.ndarray | None:
    """uint8 0/1 mask of the scan sector (convex hull of the largest bright region), or None.

    Blur + threshold finds tissue pixels; a closing bridges the dark speckle gaps so the sector is one
    component. Text burned in close to the sector can be bridged too, so the hull is taken only over
    the unclosed pieces of that component holding >= `piece_frac` of its largest piece: glyphs are
    small pieces, speckle islands lie inside the hull anyway. The hull also fills anechoic regions
    (gallbladder, bladder) on the sector border. None when no component covers `min_area_frac` of
    the frame (the caller then keeps the whole frame).
    """
    h, w = gray.shape
    # Work on a copy at most `work` px wide: only the outline matters, and the closing kernel grows
    # with the frame, so full resolution costs ~10x more for the same hull.
    scale = min(1.0, work / max(h, w))
    small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                 interpolation=cv2.INTER_AREA)
    sh, sw = small.shape
    k = 3 if min(sh, sw) < 64 else 5
    raw = (cv2.GaussianBlur(small, (k, k), 0) > threshold).astype(np.uint8)
    r = max(1, int(round(close_frac * max(sh, sw))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel),
                                                           connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < min_area_frac * sh * sw:
        return None
    pieces = raw & (labels == best).astype(np.uint8)
    m, plabels, pstats, _ = cv2.connectedComponentsWithStats(pieces, connectivity=8)
    areas = pstats[1:, cv2.CC_STAT_AREA]
    big = 1 + np.flatnonzero(areas >= piece_frac * areas.max())
    lut = np.zeros(m, np.uint8)     # a lookup table: same 0/1 image as np.isin(plabels, big), ~10x faster
    lut[big] = 1
    keep = lut[plabels]
    contours, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull = cv2.convexHull(np.concatenate(contours)).astype(np.float64)
    if scale != 1.0:  # pixel-corner mapping of the small grid back to the full frame
        hull = (hull + 0.5) / scale - 0.5
    region = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(region, np.round(hull).astype(np.int32), 1)
    return region


def crop_scan_region(gray: np.ndarray, **kw) -> np.ndarray:
    """Zero everything outside the scan region and crop to its bounding box (whole frame if none)."""
    region = scan_region_mask(gray, **kw)
    if region is None:
        return gray
    x, y, w, h = cv2.boundingRect(region)
    out = cv2.bitwise_and(gray, gray, mask=region)
    return np.ascontiguousarray(out[y:y + h, x:x + w])


def pad_square(img: np.ndarray) -> np.ndarray:
    """Centre the image on a black square canvas (keeps the aspect ratio of the anatomy)."""
    h, w = img.shape[:2]
    s = max(h, w)
    if h == w:
        return img
    top, left = (s - h) // 2, (s - w) // 2
    return cv2.copyMakeBorder(img, top, s - h - top, left, s - w - left, cv2.BORDER_CONSTANT, value=0)


def resize_square(img: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """To size x size: "pad" pads to square first (keeps the aspect), "stretch" resizes straight.

    INTER_AREA when shrinking, linear when enlarging.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    sq = pad_square(img) if mode == "pad" else img
    h, w = sq.shape[:2]
    if h == w == size:
        return np.ascontiguousarray(sq)
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(sq, (size, size), interpolation=interp)


def crop_region(img: np.ndarray, region) -> np.ndarray | None:
    """Crop to (x0, y0, x1, y1), inclusive bounds; None when the box is off the frame or < MIN_SIDE."""
    try:
        x0, y0, x1, y1 = (int(v) for v in region)
    except (TypeError, ValueError):
        return None
    h, w = img.shape[:2]
    # some vendors write the max bounds exclusive (x1 == Columns): one pixel over is that, not an error
    x1, y1 = (w - 1 if x1 == w else x1), (h - 1 if y1 == h else y1)
    if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
        return None
    if min(x1 - x0 + 1, y1 - y0 + 1) < MIN_SIDE:
        return None
    return np.ascontiguousarray(img[y0:y1 + 1, x0:x1 + 1])


def prepare_frame(arr: np.ndarray, size: int, crop: bool = True, doppler_chroma: float = 40.0,
                  doppler_fraction: float = 0.01, drop_doppler: bool = True,
                  blank_threshold: int = 10, region=None, resize: str = "pad") -> tuple[np.ndarray | None, str]:
    """Decoded frame -> (size x size uint8 gray, '') or (None, reason).

    `region` (x0, y0, x1, y1), inclusive, e.g. the reader's meta["region"]: cropped to first (so the
    Doppler fraction is measured inside it) when it lies inside the frame and is >= MIN_SIDE each way,
    ignored otherwise; `crop` then still runs the image-content crop inside it. `resize`: "pad"
    (black borders, keeps the aspect) or "stretch" (straight to size x size).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if region is not None:
        # before the Doppler test: colour legends and logos outside the scan region are not flow
        inside = crop_region(arr, region)
        arr = arr if inside is None else inside
    gray, reason = to_gray(arr, doppler_chroma, doppler_fraction, drop_doppler)
    if gray is None:
        return None, reason
    if crop:
        if int(gray.max()) <= blank_threshold:
            return None, "blank frame (no scan region)"
        gray = crop_scan_region(gray, threshold=blank_threshold)
    return resize_square(gray, size, resize), ""
