"""Splits: patient-disjoint, seeded, counts/fractions; nested label fractions; leakage rejected."""
import math

import numpy as np
import pandas as pd
import pytest

from usclf.data.cache import open_dataset, save_dataset
from usclf.data.manifest import check_manifest, read_manifest
from usclf.data.splits import SplitConfig, assign_splits, label_fraction_mask, split_dataset
from usclf.errors import UsclfError

CLASSES = ["liver", "kidney", "other"]


def make_manifest(n_patients=40, labelled_every=2, seed=0):
    """Patients with 1-3 exams of 2-4 images; every `labelled_every`-th patient has labelled exams,
    and every 5th labelled patient also has one label-free exam."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        n_exams = 1 + p % 3
        for e in range(n_exams):
            labelled = p % labelled_every == 0 and not (p % 5 == 0 and e == n_exams - 1 and n_exams > 1)
            for i in range(2 + (p + e) % 3):
                lab = rng.integers(0, 2, len(CLASSES)).astype(float) if labelled else [np.nan] * len(CLASSES)
                rows.append({"image_id": f"p{p}_e{e}_{i}", "path": f"p{p}/e{e}/{i}.png", "frame": 0,
                             "exam_id": f"p{p}_e{e}", "patient_id": f"p{p}", "split": "unlabeled",
                             **dict(zip(CLASSES, lab))})
    return pd.DataFrame(rows)


def labelled_exams(df):
    return set(df.loc[df[CLASSES].notna().all(axis=1), "exam_id"])


def test_fractions_patient_disjoint_and_labels_only_where_allowed():
    df = make_manifest()
    out = assign_splits(df, SplitConfig(unlabeled=0.6, train=0.2, val=0.08, test=0.12, seed=3), CLASSES)
    check_manifest(out, CLASSES)  # valid: no leakage, no labels on unlabeled rows
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    # every multi-exam patient kept together
    multi = df.groupby("patient_id")["exam_id"].nunique()
    assert (multi > 1).sum() > 5
    lab = labelled_exams(df)
    for s in ("train", "val", "test"):
        assert set(out.loc[out["split"] == s, "exam_id"]) <= lab
    assert out.loc[out["split"] == "unlabeled", CLASSES].isna().all().all()
    # label-free exams only in `unlabeled`
    free = set(df["exam_id"]) - lab
    assert set(out.loc[out["exam_id"].isin(free), "split"]) <= {"unlabeled"}
    n = df["exam_id"].nunique()
    counts = out.attrs["split_summary"]["exams"]
    for s, f in (("train", 0.2), ("val", 0.08), ("test", 0.12)):
        assert abs(counts[s] - f * n) <= 2, (s, counts)
    # labels of labelled rows are untouched
    merged = out[out["split"] == "train"].merge(df, on="image_id", suffixes=("", "_orig"))
    for c in CLASSES:
        assert (merged[c] == merged[c + "_orig"]).all()


def test_counts_exact_with_single_exam_patients():
    df = make_manifest(n_patients=60, labelled_every=1)
    df = df[df["exam_id"].str.endswith("_e0")]  # one exam per patient
    out = assign_splits(df, SplitConfig(unlabeled=20, train=12, val=5, test=7), CLASSES)
    ex = out.groupby("split")["exam_id"].nunique().to_dict()
    assert ex == {"unlabeled": 20, "train": 12, "val": 5, "test": 7}
    # 16 exams beyond every quota are left out and counted
    assert out.attrs["split_summary"]["unused_exams"] == 16
    # labelled exams sent to `unlabeled` have their labels stripped (and are counted)
    assert out.attrs["split_summary"]["stripped_labelled_exams"] == 20
    check_manifest(out, CLASSES)


def test_paper_default_fractions_keep_every_exam():
    df = make_manifest(n_patients=150, labelled_every=1)
    df = df[df[CLASSES].notna().all(axis=1)]  # every exam labelled, as from the simulator
    out = assign_splits(df, SplitConfig(seed=1), CLASSES)
    summary = out.attrs["split_summary"]
    assert summary["unused_exams"] == 0
    assert out["exam_id"].nunique() == df["exam_id"].nunique()
    assert min(summary["exams"][s] for s in ("train", "val", "test")) >= 1
    assert summary["exams"]["unlabeled"] > 0.85 * df["exam_id"].nunique()


def test_deterministic_per_seed_and_different_across_seeds():
    df = make_manifest()
    cfg = SplitConfig(unlabeled=0.6, train=0.2, val=0.08, test=0.12, seed=7)
    a = assign_splits(df, cfg, CLASSES)
    b = assign_splits(df.sample(frac=1, random_state=1), cfg, CLASSES)  # row order must not matter
    key = lambda d: dict(zip(d["image_id"], d["split"]))  # noqa: E731
    assert key(a) == key(b)
    c = assign_splits(df, SplitConfig(unlabeled=0.6, train=0.2, val=0.08, test=0.12, seed=8), CLASSES)
    assert key(a) != key(c)


def test_too_few_labelled_exams_and_bad_sizes_are_clear_errors():
    df = make_manifest(labelled_every=4)
    with pytest.raises(UsclfError, match="labelled exams"):
        assign_splits(df, SplitConfig(unlabeled=0.1, train=0.5, val=0.2, test=0.2), CLASSES)
    with pytest.raises(UsclfError, match="sum to"):
        assign_splits(df, SplitConfig(unlabeled=0.9, train=0.1, val=0.1, test=0.1), CLASSES)
    with pytest.raises(UsclfError, match="whole number"):
        assign_splits(df, SplitConfig(train=2.5), CLASSES)
    bad = df.copy()
    bad.loc[0, "patient_id"] = np.nan
    with pytest.raises(UsclfError, match="split.by=exam"):
        assign_splits(bad, SplitConfig(), CLASSES)
    partial = make_manifest(labelled_every=1)
    partial.loc[0, "kidney"] = np.nan
    with pytest.raises(UsclfError, match="some classes but not others"):
        assign_splits(partial, SplitConfig(), CLASSES)


def test_label_blind_mode():
    df = make_manifest(n_patients=30, labelled_every=1)
    df = df[df[CLASSES].notna().all(axis=1)]  # everything labelled
    cfg = SplitConfig(unlabeled=0.4, train=0.3, val=0.1, test=0.2, labeled_only_for_eval=False, seed=2)
    out = assign_splits(df, cfg, CLASSES)
    check_manifest(out, CLASSES)
    with pytest.raises(UsclfError, match="without labels"):
        assign_splits(make_manifest(labelled_every=2), cfg, CLASSES)


def test_leakage_is_rejected_by_validation(tmp_path):
    df = make_manifest()
    out = assign_splits(df, SplitConfig(unlabeled=0.6, train=0.2, val=0.08, test=0.12), CLASSES)
    pid = out.loc[out["split"] == "train", "patient_id"].iloc[0]
    leaked = out.copy()
    row = leaked.index[(leaked["patient_id"] == pid)][0]
    leaked.loc[row, "split"] = "test"
    with pytest.raises(UsclfError, match=f"patient leakage.*{pid}"):
        check_manifest(leaked, CLASSES)
    # splitting by exam while patients have several exams leaks, and split_dataset refuses to write it
    df = make_manifest(labelled_every=1)
    images = np.zeros((len(df), 8, 8), np.uint8)
    save_dataset(tmp_path / "ds", images, df, CLASSES)
    with pytest.raises(UsclfError, match="patient leakage"):
        split_dataset(tmp_path / "ds", SplitConfig(unlabeled=0.3, train=0.3, val=0.2, test=0.2, by="exam"))
    assert not list((tmp_path / "ds").glob("manifest_split*"))


def test_split_dataset_writes_a_valid_manifest(tmp_path):
    df = make_manifest()
    images = np.random.default_rng(0).integers(0, 255, (len(df), 8, 8), dtype=np.uint8)
    save_dataset(tmp_path / "ds", images, df, CLASSES)
    cfg = SplitConfig(unlabeled=0.6, train=0.2, val=0.08, test=0.12, seed=4)
    out = split_dataset(tmp_path / "ds", cfg)
    path = tmp_path / "ds" / "manifest_split_seed4.csv"
    back = read_manifest(path)
    check_manifest(back, CLASSES)
    assert list(back["image_id"]) == list(out["image_id"])
    data = open_dataset(tmp_path / "ds", manifest=path)
    # cache rows still point at the right pixels
    orig = open_dataset(tmp_path / "ds")
    r = orig.manifest.set_index("image_id")["cache_row"]
    assert (data.manifest["cache_row"].to_numpy() == r[data.manifest["image_id"]].to_numpy()).all()
    with pytest.raises(UsclfError, match="refusing to overwrite"):
        split_dataset(tmp_path / "ds", cfg, out_manifest=tmp_path / "ds" / "manifest.csv")


def test_label_fractions_nested_by_exam_and_seeded():
    df = make_manifest(n_patients=80, labelled_every=1)
    out = assign_splits(df, SplitConfig(unlabeled=0.2, train=0.6, val=0.1, test=0.1, seed=0), CLASSES)
    train_exams = out.loc[out["split"] == "train", "exam_id"].unique()
    n = len(train_exams)
    masks = {f: label_fraction_mask(out, f, seed=5) for f in (0.1, 0.2, 0.5, 1.0)}
    prev = np.zeros(len(out), bool)
    for f, m in masks.items():
        assert not (m & (out["split"] != "train").to_numpy()).any()
        kept = out.loc[m, "exam_id"].unique()
        assert len(kept) == max(1, math.ceil(f * n))
        # whole exams: every row of a kept exam is kept
        assert m[out["exam_id"].isin(kept).to_numpy()].all()
        assert (prev <= m).all()  # nested
        prev = m
    assert masks[1.0].sum() == (out["split"] == "train").sum()
    assert (label_fraction_mask(out, 0.2, seed=5) == masks[0.2]).all()
    assert not (label_fraction_mask(out, 0.2, seed=6) == masks[0.2]).all()
    # at least one exam even for a tiny fraction
    assert out.loc[label_fraction_mask(out, 1e-6, seed=0), "exam_id"].nunique() == 1
    with pytest.raises(UsclfError, match="label fraction"):
        label_fraction_mask(out, 0.0, seed=0)


def test_label_free_exam_of_a_labelled_split_patient_is_left_out():
    df = make_manifest(n_patients=40, labelled_every=1)  # patients 5, 35 hold a label-free exam
    out = assign_splits(df, SplitConfig(unlabeled=0, train=50, val=10, test=14, seed=0), CLASSES)
    free = set(df["exam_id"]) - labelled_exams(df)
    assert free and not (set(out["exam_id"]) & free)  # all patients are in labelled splits here
    assert out.attrs["split_summary"]["unused_exams"] == len(free)
    assert out.attrs["split_summary"]["dropped_rows"] == int(df["exam_id"].isin(free).sum())
    check_manifest(out, CLASSES)


def test_split_does_not_depend_on_the_hash_salt(tmp_path):
    """Ids are salted hashes; re-ingesting with another salt must give the same split of the same files."""
    from usclf.data.ingest import IngestConfig, ingest
    from usclf.data.simulate import SimulateConfig, simulate
    from usclf.data.splits import split_dataset

    simulate(tmp_path / "raw", SimulateConfig(exams=10, size=48, seed=4), progress=False)
    paths = []
    for salt in ("salt-a", "salt-b"):
        out = tmp_path / salt
        ingest(tmp_path / "raw", out, tmp_path / "raw" / "labels.csv", IngestConfig(size=32, salt=salt),
               progress=False)
        df = split_dataset(out, SplitConfig(unlabeled=0.4, train=0.2, val=0.2, test=0.2, seed=3))
        paths.append(df.set_index("path")["split"].sort_index())
    assert paths[0].equals(paths[1])
