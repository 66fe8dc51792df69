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


# --- label-stratified draw (issue "Splits that can measure anything") --------------------------------------

LUNG = ["liver", "kidney", "spleen", "bladder", "other"]
LUNG_SPLIT = dict(unlabeled=15, train=10, val=5, test=5)  # exams, as on the real 35-patient set


def lung_manifest(rare=(4, 17, 29), two_exam=(3, 8, 21, 30), seed=0):
    """35 patients (those in `two_exam` have two exams) with 3-7 labelled images per exam; organs at various
    rates per patient, `bladder` only in the `rare` patients; `other` marks an image without any organ."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(35):
        organs = {"liver": p % 5 != 0, "kidney": p % 2 == 0, "spleen": p % 4 == 1, "bladder": p in rare}
        for e in range(2 if p in two_exam else 1):
            for i in range(3 + (7 * p + e) % 5):
                lab = {c: float(organs[c] and rng.random() < 0.7) for c in LUNG[:-1]}
                lab["other"] = float(not any(lab.values()))
                rows.append({"image_id": f"p{p}_e{e}_{i}", "path": f"p{p}/e{e}/{i}.png", "frame": 0,
                             "exam_id": f"p{p}_e{e}", "patient_id": f"p{p}", "split": "unlabeled", **lab})
    return pd.DataFrame(rows)


def eval_gaps(out):
    """(split, class) pairs with no positive image in val or test, counted from the rows themselves."""
    return [(s, c) for s in ("val", "test") for c in LUNG if out.loc[out["split"] == s, c].sum() == 0]


def test_stratified_draw_keeps_every_class_in_val_and_test_where_unstratified_fails():
    df = lung_manifest()
    assert df.groupby("patient_id")["bladder"].max().sum() == 3  # the rare class: 3 of 35 patients
    failed = 0
    for seed in range(11):
        out = assign_splits(df, SplitConfig(**LUNG_SPLIT, seed=seed), LUNG)
        assert eval_gaps(out) == [], seed
        summary = out.attrs["split_summary"]
        assert summary["warnings"] == []
        assert all(summary["class_images"][s]["bladder"] > 0 for s in ("train", "val", "test"))  # one each
        for s in ("train", "val", "test"):
            assert summary["class_images"][s] == {c: int(out.loc[out["split"] == s, c].sum()) for c in LUNG}
        plain = assign_splits(df, SplitConfig(**LUNG_SPLIT, seed=seed, stratify=False), LUNG)
        failed += bool(eval_gaps(plain))
        assert bool(eval_gaps(plain)) == bool(plain.attrs["split_summary"]["warnings"])
    assert failed >= 1  # the same data defeats the unstratified draw (measured: all 11 seeds)


@pytest.mark.parametrize("stratify", [True, False])
def test_stratified_draw_is_patient_disjoint_with_exact_quotas(stratify):
    df = lung_manifest()  # 39 exams: four patients hold two
    for seed in range(11):
        out = assign_splits(df, SplitConfig(**LUNG_SPLIT, seed=seed, stratify=stratify), LUNG)
        check_manifest(out, LUNG)
        assert out.groupby("patient_id")["split"].nunique().max() == 1
        assert out.groupby("split")["exam_id"].nunique().to_dict() == LUNG_SPLIT
        assert set(df.groupby("patient_id")["exam_id"].nunique().loc[lambda n: n > 1].index) & set(out["patient_id"])
        assert out.groupby("patient_id")["exam_id"].nunique().to_dict() == \
            df[df["patient_id"].isin(out["patient_id"])].groupby("patient_id")["exam_id"].nunique().to_dict()
        assert out.attrs["split_summary"]["unused_exams"] == 4
    # multi-exam patients (1-3 exams) and counts that use up every labelled exam
    df = make_manifest(n_patients=40, labelled_every=1)
    for seed in range(5):
        out = assign_splits(df, SplitConfig(unlabeled=20, train=30, val=8, test=10, seed=seed, stratify=stratify),
                            CLASSES)
        exams = out.groupby("split")["exam_id"].nunique().to_dict()
        assert {s: exams[s] for s in ("train", "val", "test")} == {"train": 30, "val": 8, "test": 10}
        assert 20 <= exams["unlabeled"] < 20 + 3  # the unchanged fill: whole patients, one more if short
        assert out.groupby("patient_id")["split"].nunique().max() == 1


@pytest.mark.parametrize("stratify", [True, False])
def test_split_depends_on_files_and_seed_only_not_ids_or_row_order(stratify):
    import hashlib
    df = lung_manifest()
    cfg = SplitConfig(**LUNG_SPLIT, seed=5, stratify=stratify)
    key = lambda d: dict(zip(d["image_id"], d["split"]))  # noqa: E731
    ref = key(assign_splits(df, cfg, LUNG))
    salted = df.copy()  # another salt: a different bijection of the ids, which reorders them
    for col in ("exam_id", "patient_id"):
        salted[col] = salted[col].map(lambda s: hashlib.sha256(f"other-salt:{s}".encode()).hexdigest()[:12])
    assert key(assign_splits(salted, cfg, LUNG)) == ref
    assert key(assign_splits(df.sample(frac=1, random_state=3), cfg, LUNG)) == ref
    assert key(assign_splits(salted.sample(frac=1, random_state=4), cfg, LUNG)) == ref


def test_a_class_that_cannot_be_placed_is_warned_about_and_printed():
    from usclf.data.splits import split_summary
    df = lung_manifest(rare=(12,))  # bladder in one patient: val or test must go without it
    df["spleen"] = 0.0              # and spleen nowhere
    for seed in range(3):
        out = assign_splits(df, SplitConfig(**LUNG_SPLIT, seed=seed), LUNG)
        warnings = out.attrs["split_summary"]["warnings"]
        gaps = eval_gaps(out)
        assert ("val", "spleen") in gaps and ("test", "spleen") in gaps and len(gaps) == 3
        assert len(warnings) == 3
        assert "class spleen has no positive image in val: its threshold will be a fallback" in warnings
        assert "class spleen has no positive image in test: its F1 is undefined and it is left out of the " \
               "weighted average" in warnings
        assert ("val", "bladder") in gaps or ("test", "bladder") in gaps
        text = split_summary(out).splitlines()
        assert [line for line in text if line.startswith("warning: ")] == [f"warning: {w}" for w in warnings]
        header = next(i for i, line in enumerate(text) if line.split() == LUNG)
        for s, line in zip(("train", "val", "test"), text[header + 1:header + 4]):
            assert line.split() == [s, *(str(out.attrs["split_summary"]["class_images"][s][c]) for c in LUNG)]
    clean = assign_splits(lung_manifest(), SplitConfig(**LUNG_SPLIT), LUNG)
    assert not [line for line in split_summary(clean).splitlines() if "warning" in line]


def test_stratified_draw_is_deterministic_per_seed():
    df = lung_manifest()
    runs = {seed: [dict(zip(o["image_id"], o["split"])) for o in
                   (assign_splits(df, SplitConfig(**LUNG_SPLIT, seed=seed), LUNG) for _ in range(2))]
            for seed in range(6)}
    assert all(a == b for a, b in runs.values())
    tests = {tuple(sorted(k for k, s in a.items() if s == "test")) for a, _ in runs.values()}
    assert len(tests) >= 4  # the seed still chooses among the stratified draws
