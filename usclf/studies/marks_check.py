"""Do the models lean on burned-in marks (caliper crosses, text)? A counterfactual on the test images.

    python pipelines/marks_check.py --run runs/evidence_busbra --source ../shared/data/busbra/export \
        --out docs/evidence_busbra/marks

Each test image is re-read from its source file and checked to give its cached frame byte for byte. Its
marks are then removed at the source resolution and the frame is prepared again exactly as ingest did:
mark = a thin bright structure, white top-hat (3 x 3) >= `--tophat` grey levels, grown by one pixel, and
filled by inpainting (Telea). The control removes the same mark-shaped pixel set shifted by a random
offset (same count and shape, other places), filled the same way. Each model (`--model`, or every trained
model of an evidence `--run`) scores the three versions; per model: the share of test images whose
predicted label set changes, the mean absolute change of the class scores, and test weighted F1 (the
model's own validation thresholds). A model that leans on the marks changes far more when they go than
when the control pixels go. The detector also takes thin bright tissue lines: an upper bound on reliance.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from usclf.data.cache import open_dataset
from usclf.data.frames import Frame
from usclf.data.preprocess import prepare_frame, to_gray
from usclf.data.readers import iter_frames
from usclf.data.transforms import AugmentConfig
from usclf.errors import UsclfError
from usclf.eval.inference import infer
from usclf.eval.report import WEIGHTED, classification_report, seeds_summary
from usclf.models.modelfile import Preprocess, load_model_file
from usclf.stages.common import rows_in
from usclf.stages.scoring import head_kind
from usclf.studies.entry import study_lock

VERSIONS = ("original", "marks_removed", "control")


def mark_mask(gray: np.ndarray, tophat: int = 45) -> np.ndarray:
    """Thin bright structures (calipers, burned-in text) of a gray frame, grown by one pixel: uint8 0/1."""
    th = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, np.ones((3, 3), np.uint8))
    return cv2.dilate((th >= tophat).astype(np.uint8), np.ones((3, 3), np.uint8))


def shifted(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same pixel pattern moved by a random cyclic offset of at least a quarter of each side."""
    h, w = mask.shape
    dy, dx = (int(rng.integers(s // 4, s - s // 4 + 1)) for s in (h, w))
    return np.roll(mask, (dy, dx), axis=(0, 1))


def fill(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`gray` with the pixels of `mask` inpainted from their surroundings (Telea, radius 2)."""
    return cv2.inpaint(gray, mask, 2, cv2.INPAINT_TELEA) if mask.any() else gray.copy()


def _frame(path: Path, index: int) -> Frame:
    for f in iter_frames(path):
        if isinstance(f, Frame) and f.frame_index == index:
            return f
    raise UsclfError(f"{path}: frame {index} not readable any more")


def counterfactuals(ds, rows: np.ndarray, source: Path, tophat: int, seed: int) -> tuple[dict, float]:
    """{version: images array with `rows` replaced}, mean mark share of the source frames."""
    prep = {k: v for k, v in ds.meta.get("config", {}).items()
            if k in ("size", "crop", "doppler_chroma", "doppler_fraction", "resize")}
    prep.setdefault("size", int(ds.meta["image_size"]))
    out = {v: np.array(ds.images) for v in VERSIONS}
    rng, shares = np.random.default_rng(seed), []
    for r in rows:
        m = ds.manifest.iloc[r]
        fr = _frame(source / m["path"], int(m["frame"]))
        gray, _ = to_gray(fr.array, prep.get("doppler_chroma", 40.0), prep.get("doppler_fraction", 0.01))
        again, _ = prepare_frame(gray, region=fr.meta.get("region"), **prep)
        cached = ds.images[int(m["cache_row"])]
        if again is None or not np.array_equal(again, cached):
            raise UsclfError(f"{m['path']} frame {m['frame']} no longer gives its cached image: is --source the "
                             f"folder this dataset was ingested from, with the same settings?")
        mask = mark_mask(gray, tophat)
        shares.append(float(mask.mean()))
        for v, mk in (("marks_removed", mask), ("control", shifted(mask, rng))):
            out[v][int(m["cache_row"])] = prepare_frame(fill(gray, mk), region=fr.meta.get("region"), **prep)[0]
    return out, float(np.mean(shares))


def score_model(path: Path, ds, rows: np.ndarray, versions: dict) -> dict:
    """One model on the three versions of the test rows: flips, mean |score change|, weighted F1."""
    model, info = load_model_file(path)
    kind = head_kind(model.head.kind)
    if kind.matched or not info.thresholds:
        raise UsclfError(f"{path} is not a trained classifier with validation thresholds")
    if info.classes != list(ds.classes):
        raise UsclfError(f"{path} predicts {info.classes}, the dataset has {ds.classes}")
    aug = AugmentConfig(**(info.preprocess or Preprocess()).augment_kwargs(int(ds.meta["image_size"])))
    y, th = ds.labels(rows).astype(int), np.asarray(info.thresholds)
    scores = {v: kind.scores(infer(model, dataclasses.replace(ds, images=imgs), rows, aug)["out"])
              for v, imgs in versions.items()}
    pred = {v: (s >= th).astype(int) for v, s in scores.items()}
    res = {f"f1_{v}": float(classification_report(y, pred[v], ds.classes).loc[WEIGHTED, "f1"]) for v in VERSIONS}
    for v in VERSIONS[1:]:
        res[f"flip_{v}"] = float((pred[v] != pred["original"]).any(1).mean())
        res[f"dscore_{v}"] = float(np.abs(scores[v] - scores["original"]).mean())
    return res


def _evidence_models(run: Path) -> list[tuple[int, str, Path]]:
    """(split seed, cell name, model file) of every trained model of an evidence run folder."""
    found = [(int(p.parts[-5].removeprefix("split")), p.parent.name, p)
             for p in sorted(run.glob("split*/train/runs/*/model.pt"))]
    if not found:
        raise UsclfError(f"--run {run}: no split*/train/runs/*/model.pt (not an evidence run folder?)")
    return found


def _strategy(cell: str) -> str:
    return cell.removeprefix("method").rsplit("-fraction", 1)[0]


def summary(df: pd.DataFrame) -> str:
    """Markdown: per strategy, each measure as mean [95 % CI] over models (seeds x split seeds)."""
    cols = ["flip_marks_removed", "flip_control", "dscore_marks_removed", "dscore_control",
            "f1_original", "f1_marks_removed", "f1_control"]
    lines = ["| strategy | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for s, g in df.groupby("strategy", sort=False):
        cells = []
        for c in cols:
            q = seeds_summary(list(g[c]))
            cells.append(f"{q['mean']:.3f}" + (f" [{q['ci95_low']:.3f}, {q['ci95_high']:.3f}]" if q["n"] > 1 else ""))
        lines.append(f"| {s} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="an evidence output folder: every trained model in it, each on its own split")
    p.add_argument("--dataset", help="a dataset folder (with --model); default: RUN/dataset")
    p.add_argument("--split-seed", type=int, default=0, help="with --model: the split whose test images are used")
    p.add_argument("--model", action="append", default=[], help="a model file (repeatable), instead of --run")
    p.add_argument("--source", required=True, help="the folder the dataset was ingested from")
    p.add_argument("--tophat", type=int, default=45, help="white top-hat (3 x 3) threshold of a mark, grey levels")
    p.add_argument("--seed", type=int, default=0, help="seed of the control's random offsets")
    p.add_argument("--out", required=True, help="output folder: marks.csv, marks.md")
    args = p.parse_args(argv)
    if bool(args.run) == bool(args.model):
        raise UsclfError("give either --run or --model (one or more)")
    with study_lock("marks-check", args.out):
        return _main(args)


def _main(args) -> int:
    source = Path(args.source)
    if not source.is_dir():
        raise UsclfError(f"--source {source} is not a folder")
    root = Path(args.dataset) if args.dataset else Path(args.run) / "dataset"
    models = _evidence_models(Path(args.run)) if args.run else \
        [(args.split_seed, Path(m).parent.name, Path(m)) for m in args.model]
    rows_out, share = [], {}
    for split in sorted({m[0] for m in models}):
        ds = open_dataset(root, root / f"manifest_split_seed{split}.csv")
        test = rows_in(ds, ["test"], "test images")
        versions, share[split] = counterfactuals(ds, test, source, args.tophat, args.seed + split)
        for _, cell, path in (m for m in models if m[0] == split):
            rows_out.append({"split_seed": split, "cell": cell, "strategy": _strategy(cell), "n_test": len(test),
                             "mark_share": share[split], **score_model(path, ds, test, versions)})
    df = pd.DataFrame(rows_out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "marks.csv", index=False, float_format="%.6f")
    (out / "marks.md").write_text(
        f"# Burned-in marks: counterfactual (`usclf/studies/marks_check.py`)\n\nMark share of the source pixels "
        f"(test images): {', '.join(f'split {k}: {v:.2%}' for k, v in share.items())}. flip = share of test images "
        f"whose predicted label set changes; dscore = mean |change| of the class scores; f1 = test weighted F1.\n\n"
        f"{summary(df)}\n")
    print(f"{len(df)} models -> {out / 'marks.csv'}, {out / 'marks.md'}")
    return 0
