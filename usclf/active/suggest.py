"""`usclf suggest`: rank unlabelled frames of an ingested dataset for annotation (usclf/active/select.py).

Clusters come from `--clusters` (a clustering model, e.g. pretrain's model.pt) or else from `--model` itself
(its clusters / label combinations / predicted label sets, `HeadKind.clusters`); uncertainty from `--model`
(margin to the per-class thresholds for classifiers, 1 - max cluster probability for clustering models).
Writes OUT/suggestions.csv (rank, image_id, path, frame, exam_id, reason, score, cluster; exam ids are the
manifest's salted ids, paths relative to the export root) and OUT/suggestions.html with the thumbnails.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import check_seed
from ..data.manifest import read_image_ids
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..eval.inference import infer
from ..locks import output_lock
from ..models.modelfile import load_model_file
from ..paths import check_writable_dir
from ..stages.common import DataConfig, open_split
from ..stages.scoring import head_kind
from .page import suggestion_page
from .select import Candidates, cluster_uncertainty, margin_uncertainty, select_frames, thumbnails

COLUMNS = ["rank", "image_id", "path", "frame", "exam_id", "reason", "score", "cluster"]


@dataclass
class SuggestResult:
    csv: Path
    html: Path
    n_suggested: int
    n_pool: int
    n_labelled: int


def _outputs(model_path, ds, rows, batch_size: int, progress: bool):
    model, info = load_model_file(model_path)
    if info.preprocess is None:
        raise UsclfError(f"{model_path}: model file has no preprocessing settings")
    _check_fits(model_path, info, ds)
    aug = AugmentConfig(**info.preprocess.augment_kwargs(int(ds.images.shape[1])))
    return head_kind(model.head.kind), info, infer(model, ds, rows, aug, batch_size, progress=progress)


def _check_fits(model_path, info, ds) -> None:
    """The model must read this dataset as it was trained: the same classes, the same cache image size."""
    if list(info.classes) != list(ds.classes):
        raise UsclfError(f"{model_path} was trained on other classes than {ds.root}: model "
                         f"{len(info.classes)} ({', '.join(info.classes)}), dataset {len(ds.classes)} "
                         f"({', '.join(ds.classes)})")
    size = (info.preprocess.ingest or {}).get("size")
    if size is not None and ds.images.shape[1:] != (int(size), int(size)):
        raise UsclfError(f"{ds.root}: cache images are {ds.images.shape[1]} px, the model {model_path} reads "
                         f"{int(size)} px (ingest the data at its size)")


def frame_facts(model_path, ds, rows: np.ndarray, labelled: np.ndarray, clusters_path=None, batch_size: int = 64,
                progress: bool = False) -> Candidates:
    """Candidates for manifest `rows` (`labelled`: bool per row) from the model(s)."""
    kind, info, outs = _outputs(model_path, ds, rows, batch_size, progress)
    th = np.asarray(info.thresholds, float)
    if kind.matched:
        scores = None
        unc, why = cluster_uncertainty(outs["out"])
    else:
        if th.shape != (len(ds.classes),):
            raise UsclfError(f"{model_path} has no per-class thresholds: run `usclf evaluate` on it first, or pass "
                             "a clustering model")
        scores = kind.scores(outs["out"])
        unc, why = margin_uncertainty(scores, th, list(ds.classes))
    if clusters_path:
        ckind, _, couts = _outputs(clusters_path, ds, rows, batch_size, progress)
        if not ckind.matched:
            raise UsclfError(f"--clusters {clusters_path} is not a clustering model (head '{ckind.name}')")
        cluster, typ = couts["out"].argmax(1), couts["out"].max(1)
    else:
        cluster, typ = kind.clusters(outs, scores, th)
    man = ds.manifest.iloc[rows]
    return Candidates(np.asarray(cluster, np.int64), np.asarray(typ, float), np.asarray(unc, float), why,
                      man["exam_id"].astype(str).to_numpy(), thumbnails(ds.images[man["cache_row"].to_numpy()]),
                      np.asarray(labelled, bool))


def _labelled_mask(ds, labeled: str | None) -> np.ndarray:
    if not labeled:
        return ~np.isnan(ds.labels()).any(1)
    ids = set(read_image_ids(labeled, "--labeled file"))
    known = ds.manifest["image_id"].astype(str)
    unknown = sorted(ids - set(known))
    if unknown:
        raise UsclfError(f"{labeled}: {len(unknown)} image id(s) are not rows of {ds.root}, e.g. {unknown[0]}")
    return known.isin(ids).to_numpy()


def suggest(model: str | Path, data: str | Path, budget: int, out: str | Path, clusters: str | Path | None = None,
            labeled: str | None = None, pool_splits=("unlabeled",), strategy: str = "coverage", cover: int = 1,
            dup_corr: float = 0.95, seed: int = 0, split_seed: int = 0, batch_size: int = 64,
            progress: bool = True) -> SuggestResult:
    """Suggest up to `budget` pool frames to label next; see the module docstring for the outputs."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsclfError(f"--out {out} is a file, not a folder")
    if budget < 1 or cover < 0 or not 0 < dup_corr <= 1:
        raise UsclfError(f"need --budget >= 1, --cover >= 0 and 0 < --dup-corr <= 1 (got {budget}, {cover}, "
                         f"{dup_corr})")
    check_seed(seed, "--seed")
    check_seed(split_seed, "--split-seed")
    ds, _ = open_split(DataConfig(path=str(data), split_seed=split_seed))
    lab = _labelled_mask(ds, labeled)
    pool = ds.manifest["split"].isin(list(pool_splits)).to_numpy() & ~lab
    if not pool.any():
        raise UsclfError(f"no unlabelled frames in split(s) {', '.join(pool_splits)} of {data}")
    rows = np.flatnonzero(pool | lab)
    check_writable_dir(out)
    with output_lock(out, "suggest"):   # one writer per --out: a second suggest stops before any inference
        cands = frame_facts(model, ds, rows, lab[rows], clusters, batch_size, progress)
        picks = select_frames(cands, budget, strategy, cover, dup_corr, seed)
        man = ds.manifest.iloc[rows[[p.index for p in picks]]]
        df = pd.DataFrame({"rank": np.arange(1, len(picks) + 1),
                           "image_id": man["image_id"].astype(str).to_numpy(),
                           "path": man["path"].astype(str).to_numpy(), "frame": man["frame"].to_numpy(),
                           "exam_id": man["exam_id"].astype(str).to_numpy(), "reason": [p.reason for p in picks],
                           "score": [round(p.score, 6) for p in picks],
                           "cluster": [int(cands.cluster[p.index]) for p in picks]}, columns=COLUMNS)
        try:
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / ".suggestions.csv.tmp"
            df.to_csv(tmp, index=False)
            tmp.replace(out / "suggestions.csv")
            html = suggestion_page(df, ds.images[man["cache_row"].to_numpy()], out,
                                   title=f"{len(df)} frames to label next ({strategy})")
        except OSError as e:
            raise UsclfError(f"cannot write into --out {out}: {e.strerror or e}") from None
        return SuggestResult(out / "suggestions.csv", html, len(df), int(pool.sum()), int(lab.sum()))
