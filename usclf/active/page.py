"""The annotator's page: the suggested frames as thumbnails with rank, reason and file, in the cluster
gallery's style (usclf/eval/gallery.py)."""
from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..errors import UsclfError
from ..eval.gallery import PAGE_CSS, thumb_tile

_EXTRA = (".grid{display:flex;flex-wrap:wrap;gap:.8em}.tile{background:#fff;border:1px solid #ddd;border-radius:6px;"
          "padding:.4em;width:12em;font-size:.8em}.tile img{width:100%;border:1px solid #ccc}")


def suggestion_page(df: pd.DataFrame, images: np.ndarray, out_dir: str | Path, title: str = "", thumb: int = 128
                    ) -> Path:
    """Write out_dir/suggestions.html and out_dir/suggestions/NNNN.png (one per row of `df`, same order)."""
    if len(df) != len(images):
        raise UsclfError(f"suggestion page: {len(df)} rows but {len(images)} images")
    out_dir = Path(out_dir)
    img_dir = out_dir / "suggestions"
    img_dir.mkdir(parents=True, exist_ok=True)
    tiles = []
    for (_, r), img in zip(df.iterrows(), images):
        name = f"{int(r['rank']):04d}.png"
        if not cv2.imwrite(str(img_dir / name), thumb_tile(np.asarray(img), thumb)):
            raise UsclfError(f"could not write {img_dir / name}")
        where = f"{r['path']}" + (f" frame {int(r['frame'])}" if pd.notna(r["frame"]) else "")
        tiles.append(f'<div class="tile"><img src="suggestions/{name}" alt="rank {int(r["rank"])}">'
                     f'<b>#{int(r["rank"])}</b> {html.escape(str(r["reason"]))}<br>'
                     f'<span class="muted">{html.escape(where)}<br>exam {html.escape(str(r["exam_id"]))}</span></div>')
    head = html.escape(title or "Frames to label next")
    doc = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{head}</title>'
           f"<style>{PAGE_CSS}{_EXTRA}</style></head><body>\n<h1>{head}</h1>\n"
           "<p>Best first. Label them, add the rows to your labels CSV, re-ingest "
           f"and train again.</p>\n<div class=\"grid\">\n" + "\n".join(tiles) + "\n</div>\n</body></html>\n")
    path = out_dir / "suggestions.html"
    path.write_text(doc, encoding="utf-8")
    return path
