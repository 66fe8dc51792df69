"""HTML cluster gallery: for each cluster, its size, its matched label mix (Algorithm 1) and a grid of its
most confident images, so a person can see what the clusters are."""

from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np

from usclf.errors import UsclfError

PAD_VALUE = 255  # white separators between thumbnails
PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.1em;margin:.2em 0}
.cluster{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:0 0 1em 0;
 display:flex;gap:1.2em;align-items:flex-start}
.info{min-width:17em;max-width:22em;font-size:.9em}
.mix{font-weight:600}
table.bars{border-collapse:collapse;font-size:.85em} table.bars td{padding:1px 4px}
.bar{background:#4c78a8;height:.8em} .track{background:#eee;width:8em}
img.sprite{image-rendering:auto;max-width:100%;border:1px solid #ccc}
.muted{color:#777}
"""


def _check_inputs(images, clusters, confidence, matched, classes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not hasattr(images, "shape") or len(images.shape) != 3:
        raise UsclfError(f"gallery images must be an N x H x W array, got shape {getattr(images, 'shape', None)}")
    if images.dtype != np.uint8:
        raise UsclfError(f"gallery images must be uint8, got {images.dtype}")
    n = images.shape[0]
    clusters = np.asarray(clusters).ravel()
    confidence = np.asarray(confidence, dtype=float).ravel()
    matched = np.asarray(matched, dtype=float)
    if len(clusters) != n or len(confidence) != n:
        raise UsclfError(f"gallery: {n} images but {len(clusters)} cluster ids and {len(confidence)} "
                         "confidences")
    if matched.ndim != 2 or matched.shape[1] != len(classes):
        raise UsclfError(f"gallery: matched label mix must be K x {len(classes)} (one column per class), "
                         f"got shape {matched.shape}")
    if not np.issubdtype(clusters.dtype, np.integer):
        if not np.all(np.mod(clusters, 1) == 0):
            raise UsclfError("gallery: cluster ids must be integers")
        clusters = clusters.astype(np.int64)
    if n and (clusters.min() < 0 or clusters.max() >= matched.shape[0]):
        raise UsclfError(f"gallery: cluster ids must lie in [0, {matched.shape[0] - 1}] (rows of the label mix), "
                         f"got {clusters.min()}..{clusters.max()}")
    if not np.isfinite(confidence).all() or not np.isfinite(matched).all():
        raise UsclfError("gallery: confidence and label mix must be finite numbers")
    return clusters, confidence, matched


def thumb_tile(img: np.ndarray, size: int) -> np.ndarray:
    """Fit img into a size x size tile (aspect kept, black margins)."""
    h, w = img.shape
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
    tile = np.zeros((size, size), dtype=np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    tile[y0:y0 + nh, x0:x0 + nw] = small
    return tile


def make_sprite(tiles: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Grid of equal-size square uint8 tiles, `cols` per row, separated by `pad` white pixels."""
    size = tiles[0].shape[0]
    rows = -(-len(tiles) // cols)
    cols = min(cols, len(tiles))
    out = np.full((rows * (size + pad) + pad, cols * (size + pad) + pad), PAD_VALUE, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (size + pad), pad + c * (size + pad)
        out[y:y + size, x:x + size] = t
    return out


def _mix_text(mix: np.ndarray, classes: list[str], floor: float = 0.05) -> str:
    order = np.argsort(-mix, kind="stable")
    parts = [f"{classes[i]} {mix[i]:.2f}" for i in order if mix[i] >= floor]
    return ", ".join(parts) if parts else "no label above 0.05"


def _bars(mix: np.ndarray, classes: list[str]) -> str:
    rows = []
    for name, v in zip(classes, mix):
        w = max(0.0, min(1.0, float(v))) * 100
        rows.append(f'<tr><td>{html.escape(str(name))}</td><td class="track"><div class="bar" '
                    f'style="width:{w:.0f}%"></div></td><td>{v:.2f}</td></tr>')
    return '<table class="bars">' + "".join(rows) + "</table>"


def cluster_gallery(images: np.ndarray, clusters: np.ndarray, confidence: np.ndarray, matched: np.ndarray,
                    classes: list[str], out_dir: str | Path, per_cluster: int = 12, title: str = "",
                    thumb: int = 112, cols: int = 6) -> Path:
    """Write out_dir/gallery.html and one thumbnail grid per non-empty cluster in out_dir/gallery/.

    Clusters are sorted by size (largest first); each shows its size, the matched label mix (text and
    bars) and its `per_cluster` most confident images. Empty clusters are listed as empty.
    Returns the path of the HTML file.
    """
    classes = [str(c) for c in classes]
    clusters, confidence, matched = _check_inputs(images, clusters, confidence, matched, classes)
    if per_cluster < 1 or thumb < 8 or cols < 1:
        raise UsclfError(f"gallery: per_cluster, cols must be >= 1 and thumb >= 8 "
                         f"(got {per_cluster}, {cols}, {thumb})")
    out_dir = Path(out_dir)
    img_dir = out_dir / "gallery"
    img_dir.mkdir(parents=True, exist_ok=True)
    k_total = matched.shape[0]
    n = len(clusters)
    sizes = np.bincount(clusters, minlength=k_total) if n else np.zeros(k_total, dtype=int)
    width = max(2, len(str(k_total - 1)))
    order = sorted(range(k_total), key=lambda k: (-sizes[k], k))

    blocks, empty = [], []
    for k in order:
        if sizes[k] == 0:
            empty.append(k)
            continue
        members = np.flatnonzero(clusters == k)
        top = members[np.argsort(-confidence[members], kind="stable")[:per_cluster]]
        # One sorted read from a memmap, then back to confidence order.
        sorted_top = np.sort(top)
        pix = np.asarray(images[sorted_top])
        pix = pix[np.searchsorted(sorted_top, top)]
        sprite = make_sprite([thumb_tile(p, thumb) for p in pix], cols)
        name = f"cluster_{k:0{width}d}.png"
        if not cv2.imwrite(str(img_dir / name), sprite):
            raise UsclfError(f"gallery: could not write {img_dir / name}")
        mix = matched[k]
        conf = confidence[members]
        blocks.append(
            f'<div class="cluster" id="cluster-{k}"><div class="info">'
            f"<h2>Cluster {k}</h2>"
            f"<p>{sizes[k]} images ({100 * sizes[k] / n:.1f} %)<br>"
            f'<span class="muted">confidence: mean {conf.mean():.2f}, shown {confidence[top].min():.2f}'
            f"&ndash;{confidence[top].max():.2f}</span></p>"
            f'<p class="mix">{html.escape(_mix_text(mix, classes))}</p>{_bars(mix, classes)}</div>'
            f'<img class="sprite" src="gallery/{name}" '
            f'alt="{html.escape(f"cluster {k}: {len(top)} most confident images")}"></div>'
        )
    empty_html = ""
    if empty:
        empty_html = (f"<h2>Empty clusters ({len(empty)})</h2><p>"
                      + ", ".join(str(k) for k in sorted(empty)) + "</p>")
    head = html.escape(title or "Cluster gallery")
    doc = (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{head}</title><style>{PAGE_CSS}</style>'
        f"</head><body>\n<h1>{head}</h1>\n"
        f"<p>{n} images in {k_total} clusters ({k_total - len(empty)} non-empty), largest first. "
        f"Each grid shows up to {per_cluster} of the cluster's most confident images; the label mix is "
        f"the mean label vector of the development images assigned to it (Algorithm 1).</p>\n"
        + "\n".join(blocks) + "\n" + empty_html + "\n</body></html>\n"
    )
    out = out_dir / "gallery.html"
    out.write_text(doc, encoding="utf-8")
    return out
