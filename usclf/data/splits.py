"""Patient-disjoint, label-stratified, seeded splits and nested label fractions (docs/design.md §3.4).

Sizes are fractions of all exams (< 1) or exam counts (>= 1). With `labeled_only_for_eval` (default)
train/val/test are drawn from patients that have labelled exams and `unlabeled` is filled with the
label-free exams first, then with left-over labelled exams whose labels are stripped. When all four sizes
are fractions summing to 1, `unlabeled` takes every exam left, so rounding never drops data. Exams beyond
every quota are left out of the manifest (counted in the summary). With `stratify` (default) patients are
drawn so that small val/test splits keep a positive of every class where the data allows (`stratify.py`);
the summary warns about each class that val or test still lacks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsclfError
from .cache import MANIFEST, open_dataset
from .manifest import SPLITS, check_manifest, write_manifest
from .stratify import stratified_take

# Paper Sec. 3.1: 6549 unlabelled, 224 labelled-train, 77 val, 101 test exams (6951 in all).
_PAPER = {"unlabeled": 6549, "train": 224, "val": 77, "test": 101}
_PAPER_TOTAL = sum(_PAPER.values())


@dataclass
class SplitConfig:
    """How a dataset is split; each size is a fraction of all exams (< 1) or a number of exams (>= 1)."""
    unlabeled: float = _PAPER["unlabeled"] / _PAPER_TOTAL   # paper Sec. 3.1 proportions
    train: float = _PAPER["train"] / _PAPER_TOTAL
    val: float = _PAPER["val"] / _PAPER_TOTAL
    test: float = _PAPER["test"] / _PAPER_TOTAL
    by: str = "patient"          # paper: patients never straddle splits; "exam" for data without patient ids
    seed: int = 0
    labeled_only_for_eval: bool = True   # False: label-blind draw (every drawn exam must carry labels)
    stratify: bool = True        # False: the unstratified greedy draw in seeded order (kept for comparison)


def _quota(value: float, n_total: int, name: str) -> int:
    if value < 0 or not math.isfinite(value):
        raise UsclfError(f"split.{name} must be a fraction in [0, 1) or a count >= 1, got {value}")
    if value < 1:
        k = int(round(value * n_total))
        return max(k, 1) if value > 0 else 0
    if not float(value).is_integer():
        raise UsclfError(f"split.{name} = {value} is a count (>= 1) and must be a whole number of exams")
    return int(value)


def _take(pool: list, sizes: dict, target: int) -> tuple[list, list]:
    """Greedy: take groups (in pool order) that fit in `target` exams, then one more if still short."""
    taken, rest, n = [], [], 0
    for g in pool:
        if n + sizes[g] <= target and n < target:
            taken.append(g)
            n += sizes[g]
        else:
            rest.append(g)
    if n < target and rest:
        taken.append(rest.pop(0))
    return taken, rest


def assign_splits(df: pd.DataFrame, cfg: SplitConfig, classes: list[str]) -> pd.DataFrame:
    """Return a copy of `df` with `split` filled (patient-disjoint, seeded); labels blanked on `unlabeled`.

    Rows without labels inside a train/val/test exam, and exams beyond every quota, are dropped;
    `result.attrs['split_summary']` counts exams/images per split and what was stripped or dropped.
    """
    if cfg.by not in ("patient", "exam"):
        raise UsclfError(f"split.by must be 'patient' or 'exam', got '{cfg.by}'")
    missing = [c for c in ["exam_id", "patient_id", *classes] if c not in df.columns]
    if missing:
        raise UsclfError(f"cannot split: manifest lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise UsclfError("cannot split an empty manifest")
    df = df.copy().reset_index(drop=True)
    df["exam_id"] = df["exam_id"].astype(str)
    if cfg.by == "exam":  # each exam is its own patient where no patient id is known
        df["patient_id"] = df["patient_id"].where(df["patient_id"].notna(), df["exam_id"])
    elif df["patient_id"].isna().any():
        raise UsclfError(f"{int(df['patient_id'].isna().sum())} row(s) have no patient_id; "
                         "fill it or set split.by=exam (patient-disjointness then cannot be guaranteed)")
    df["patient_id"] = df["patient_id"].astype(str)
    multi = df.groupby("exam_id")["patient_id"].nunique()
    if (multi > 1).any():
        raise UsclfError(f"exam {multi[multi > 1].index[0]} belongs to more than one patient")

    labels = df[classes].apply(pd.to_numeric, errors="coerce")
    if (df[classes].notna() & labels.isna()).any().any():
        raise UsclfError("cannot split: malformed label values (labels must be 0, 1 or empty)")
    df[classes] = labels.astype(np.float64)
    n_set = labels.notna().sum(axis=1)
    partial = (n_set > 0) & (n_set < len(classes))
    if partial.any():
        raise UsclfError(f"{int(partial.sum())} row(s) are labelled for some classes but not others, "
                         f"e.g. image_id {df.loc[partial.idxmax(), 'image_id']}")
    row_labelled = (n_set == len(classes)).to_numpy()
    exam_labelled = pd.Series(row_labelled, index=df.index).groupby(df["exam_id"]).any()
    # The draw unit: patients (all their exams together) or, with by=exam, single exams.
    exam_group = df.groupby("exam_id")["patient_id" if cfg.by == "patient" else "exam_id"].first()
    # Order exams (and so patients) by their first file path, not by id: ids are salted hashes, and neither a
    # salt that changes between ingests nor the row order may change which patients land in which split.
    exam_group = exam_group.loc[exam_order(df)]
    exams_of = {p: list(g.index) for p, g in exam_group.groupby(exam_group, sort=False)}

    n_total = len(exam_group)
    names = ("test", "val", "train", "unlabeled")
    values = {k: float(getattr(cfg, k)) for k in names}
    quota = {k: _quota(values[k], n_total, k) for k in names}
    if all(v < 1 for v in values.values()):
        if sum(values.values()) > 1 + 1e-6:
            raise UsclfError(f"split fractions sum to {sum(values.values()):.4f} > 1")
        if abs(sum(values.values()) - 1) <= 1e-6:
            quota["unlabeled"] = n_total  # everything left over

    rng = np.random.default_rng(cfg.seed)
    patients = list(exams_of)  # ordered by first file path (see above)
    order = [patients[i] for i in rng.permutation(len(patients))]
    lab_exams = {p: [e for e in exams_of[p] if exam_labelled[e]] for p in order}
    need = quota["train"] + quota["val"] + quota["test"]
    if cfg.labeled_only_for_eval:
        have = sum(len(v) for v in lab_exams.values())
        if need > have:
            raise UsclfError(f"train/val/test need {need} labelled exams but only {have} carry labels; "
                             "set split.train/val/test as smaller fractions or counts")
        pool = [p for p in order if lab_exams[p]]
        size = {p: len(lab_exams[p]) for p in pool}
    else:
        if need > n_total:
            raise UsclfError(f"train/val/test need {need} exams but the dataset has {n_total}")
        pool = list(order)
        size = {p: len(exams_of[p]) for p in pool}

    drawn = (lambda p: lab_exams[p]) if cfg.labeled_only_for_eval else (lambda p: exams_of[p])
    if cfg.stratify:
        pos = df[classes].fillna(0).groupby(df["exam_id"]).sum()  # positive images per exam and class
        counts = {p: pos.loc[drawn(p)].to_numpy().sum(0) for p in pool}
        taken_in = stratified_take(pool, size, counts, {k: quota[k] for k in ("test", "val", "train")},
                                   spare=sum(size.values()) - need)
    else:
        taken_in = {}
        for name in ("test", "val", "train"):
            taken_in[name], pool = _take(pool, size, quota[name])
    split_of_exam: dict[str, str] = {}
    for name, taken in taken_in.items():
        for p in taken:
            for e in drawn(p):
                split_of_exam[e] = name
    chosen = {exam_group[e] for e in split_of_exam}
    unl_pool = [p for p in order if p not in chosen and not lab_exams[p]]
    unl_pool += [p for p in order if p not in chosen and lab_exams[p]]
    taken, _ = _take(unl_pool, {p: len(exams_of[p]) for p in unl_pool}, quota["unlabeled"])
    for p in taken:
        for e in exams_of[p]:
            split_of_exam[e] = "unlabeled"

    split = df["exam_id"].map(split_of_exam)
    if not cfg.labeled_only_for_eval:
        blind = split.isin(["train", "val", "test"]) & ~df["exam_id"].map(exam_labelled)
        if blind.any():
            raise UsclfError(f"labeled_only_for_eval=false drew {df.loc[blind, 'exam_id'].nunique()} exam(s) "
                             "without labels into train/val/test; label them or set labeled_only_for_eval=true")
    unused_exams = int(n_total - len(split_of_exam))
    # A chosen patient's label-free exams (or rows) cannot join its labelled split: leave them out.
    keep = split.notna() & ((split == "unlabeled") | row_labelled)
    stripped = (split == "unlabeled") & pd.Series(row_labelled)
    df["split"] = split
    df.loc[split == "unlabeled", classes] = np.nan
    out = df[keep.to_numpy()].reset_index(drop=True)
    per_split = out.groupby("split")
    out.attrs["split_summary"] = {
        "exams": {s: int(per_split["exam_id"].nunique().get(s, 0)) for s in SPLITS},
        "patients": {s: int(per_split["patient_id"].nunique().get(s, 0)) for s in SPLITS},
        "images": {s: int(per_split.size().get(s, 0)) for s in SPLITS},
        "stripped_labelled_exams": int(df.loc[stripped, "exam_id"].nunique()),
        "dropped_rows": int((~keep).sum()),
        "unused_exams": unused_exams,
        "class_images": {s: {c: int(out.loc[out["split"] == s, c].sum()) for c in classes}
                         for s in ("train", "val", "test")},
    }
    out.attrs["split_summary"]["warnings"] = _class_warnings(out.attrs["split_summary"], classes)
    return out


def _class_warnings(summary: dict, classes: list[str]) -> list[str]:
    """One line per class without a positive image in a non-empty val or test split (docs/design.md §6.2-6.3)."""
    why = {"val": "its threshold will be a fallback",
           "test": "its F1 is undefined and it is left out of the weighted average"}
    return [f"class {c} has no positive image in {s}: {why[s]}" for c in classes for s in ("val", "test")
            if summary["exams"][s] and summary["class_images"][s][c] == 0]


def exam_order(df: pd.DataFrame) -> np.ndarray:
    """Exam ids of `df` ordered by each exam's first file path (then frame), never by the id itself.

    Ids are salted hashes and the salt may change between ingests of the same export: anything seeded
    that draws exams must permute this order so the draw depends only on the data and the seed.
    """
    if df.empty:
        return np.array([], dtype=str)
    exam = df["exam_id"].astype(str)
    where = (df["path"].astype(str) + "#" + df["frame"].astype(str)) if {"path", "frame"} <= set(df.columns) \
        else df["image_id"].astype(str)
    first = where.groupby(exam.to_numpy()).min()
    return first.sort_values(kind="stable").index.to_numpy().astype(str)


def label_fraction_mask(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over `df` rows: the train rows kept at label `fraction`, drawn by whole exams.

    One seeded permutation of the train exams (in `exam_order`: by file path, never by salted id); the
    first ceil(fraction * n) exams (>= 1) are kept, so smaller fractions are subsets of larger ones.
    """
    if not 0 < fraction <= 1:
        raise UsclfError(f"label fraction must be in (0, 1], got {fraction}")
    train = (df["split"] == "train").to_numpy()
    exams = exam_order(df.loc[train])
    if len(exams) == 0:
        raise UsclfError("no train rows to draw a label fraction from")
    perm = np.random.default_rng(seed).permutation(len(exams))
    k = max(1, math.ceil(fraction * len(exams) - 1e-9))
    kept = set(exams[perm[:k]])
    return train & df["exam_id"].astype(str).isin(kept).to_numpy()


def split_dataset(dataset_dir: str | Path, cfg: SplitConfig, out_manifest: str | Path | None = None) -> pd.DataFrame:
    """Split the manifest of a dataset folder, validate it, and write it (default: the folder's
    `manifest_split_seed<seed>.csv`, so the ingest manifest and its labels stay intact)."""
    data = open_dataset(dataset_dir)
    out = assign_splits(data.manifest, cfg, data.classes)
    check_manifest(out, data.classes)
    path = Path(out_manifest) if out_manifest is not None else Path(dataset_dir) / f"manifest_split_seed{cfg.seed}.csv"
    if path.resolve() == (Path(dataset_dir) / MANIFEST).resolve():
        raise UsclfError(f"refusing to overwrite the ingest manifest {path}: it holds the labels that splitting strips")
    write_manifest(out, path)
    out.attrs["path"] = str(path)
    return out


def split_summary(df) -> str:
    """One line per split (exams, patients, images), positive images per class, then the split's warnings."""
    g = df.groupby("split")
    lines = [f"  {s:<9} {g.get_group(s)['exam_id'].nunique():>5} exams {g.get_group(s)['patient_id'].nunique():>5} "
             f"patients {len(g.get_group(s)):>7} images" for s in ("unlabeled", "train", "val", "test") if s in g.groups]
    summary = df.attrs.get("split_summary", {})
    table = summary.get("class_images", {})
    if table:
        classes = list(next(iter(table.values())))
        width = [max(len(c), *(len(str(t[c])) for t in table.values())) for c in classes]
        lines.append("  positive images per class:")
        lines.append("  " + " " * 9 + " ".join(f"{c:>{w}}" for c, w in zip(classes, width)))
        lines += ["  " + f"{s:<9}" + " ".join(f"{t[c]:>{w}}" for c, w in zip(classes, width)) for s, t in table.items()]
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def disjointness(data: str | Path, cfg: SplitConfig) -> str:
    """How the split keeps exams apart, as the user should read it: by patient only where ids are known."""
    meta = open_dataset(data).meta
    n, missing = int(meta.get("n_exams", 0)), int(meta.get("n_exams_without_patient_id", 0))
    if cfg.by == "exam":
        return "exam-disjoint (split.by=exam)"
    if n and missing == n:
        return "exam-disjoint (no patient ids)"
    if missing:
        return f"patient-disjoint where ids are known ({missing} of {n} exams have no patient id: each is its own patient)"
    return "patient-disjoint"
