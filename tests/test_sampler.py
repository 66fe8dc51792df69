"""Exam-level and image-level batch samplers, resume contract, Dataset + loader."""
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from usclf.data.cache import save_dataset
from usclf.data.dataset import UltrasoundDataset, collate
from usclf.data.sampler import ExamBatchSampler, RandomBatchSampler, make_loader
from usclf.data.transforms import AugmentConfig
from usclf.errors import UsclfError

CLASSES = ["liver", "kidney", "other"]


def exam_ids(sizes):
    """Row -> exam id, exams interleaved in the row order (rows of an exam need not be contiguous)."""
    ids = np.concatenate([[f"ex{e}"] * n for e, n in enumerate(sizes)])
    return ids[np.random.default_rng(0).permutation(len(ids))]


SIZES = [3, 1, 5, 2, 4, 6, 2, 3, 1, 4, 2, 5, 3]


def rows_by_exam(ids):
    return {e: set(np.flatnonzero(ids == e)) for e in np.unique(ids)}


def batches(sampler):
    return [list(b) for b in sampler]


def test_batches_are_whole_exams_and_epoch_covers_each_exam_once():
    ids = exam_ids(SIZES)
    by_exam = rows_by_exam(ids)
    s = ExamBatchSampler(ids, exams_per_batch=4, seed=1)
    out = batches(s)
    assert len(out) == len(s) == 4  # ceil(13 / 4)
    seen = []
    for b in out:
        rows = [r for r, _ in b]
        exams = {ids[r] for r in rows}
        assert sorted(rows) == sorted(set().union(*(by_exam[e] for e in exams)))  # all rows of its exams
        seen += sorted(exams)
    assert sorted(seen) == sorted(by_exam)  # every exam exactly once
    assert [len({ids[r] for r, _ in b}) for b in out] == [4, 4, 4, 1]
    assert len(ExamBatchSampler(ids, exams_per_batch=4, drop_last=True)) == 3


def test_cap_takes_a_random_subset_of_big_exams():
    ids = exam_ids(SIZES)
    by_exam = rows_by_exam(ids)
    s = ExamBatchSampler(ids, exams_per_batch=3, max_images_per_exam=2, seed=0)
    subsets = []
    for epoch in range(4):
        s.set_epoch(epoch)
        got = {}
        for b in s:
            for r, _ in b:
                got.setdefault(ids[r], []).append(r)
        assert set(got) == set(by_exam)
        for e, rows in got.items():
            assert set(rows) <= by_exam[e] and len(rows) == min(2, len(by_exam[e]))
        subsets.append(tuple(sorted(got["ex5"])))  # 6 images, capped to 2
    assert len(set(subsets)) > 1


def test_order_differs_across_epochs_and_is_reproducible():
    ids = exam_ids(SIZES)
    s = ExamBatchSampler(ids, exams_per_batch=2, seed=3)
    e0 = batches(s)
    s.set_epoch(1)
    e1 = batches(s)
    assert e0 != e1
    again = ExamBatchSampler(ids, exams_per_batch=2, seed=3)
    again.set_epoch(1)
    assert batches(again) == e1  # rows and aug seeds
    other = ExamBatchSampler(ids, exams_per_batch=2, seed=4)
    other.set_epoch(1)
    assert batches(other) != e1
    seeds = [sd for b in e0 + e1 for _, sd in b]
    assert len(set(seeds)) == len(seeds)  # every sample of every epoch has its own seed


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_disjoint_exams_and_equal_batch_counts(drop_last):
    ids = exam_ids(SIZES)  # 13 exams over 2 ranks: pad to 14 or drop to 12
    ranks = [ExamBatchSampler(ids, exams_per_batch=2, seed=5, rank=r, world_size=2, drop_last=drop_last)
             for r in range(2)]
    outs = [batches(s) for s in ranks]
    assert len(outs[0]) == len(outs[1]) == len(ranks[0]) == len(ranks[1])
    exams = [[ids[r] for b in o for r, _ in b] for o in outs]
    sets = [set(e) for e in exams]
    if drop_last:
        assert not sets[0] & sets[1] and len(sets[0] | sets[1]) == 12
    else:
        assert len(sets[0] | sets[1]) == 13 and len(sets[0] & sets[1]) == 1  # one padded repeat
    # every exam of the epoch is seen once in all (apart from the padding repeat)
    n_exams = sum(len({ids[r] for r, _ in b}) for o in outs for b in o)
    assert n_exams == (12 if drop_last else 14)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_split_the_one_process_batches_seeds_included(world, drop_last):
    """Batch sizes are global: the ranks' batches together are the batch one process draws, every row with
    the augmentation seed it has there, so W processes see the data of one."""
    ids = exam_ids(SIZES)
    for exams, make in ((True, lambda r, w: ExamBatchSampler(ids, 4, max_images_per_exam=3, seed=2, rank=r,
                                                             world_size=w, drop_last=drop_last)),
                        (False, lambda r, w: RandomBatchSampler(len(ids), 5, seed=2, rank=r, world_size=w,
                                                                drop_last=drop_last))):
        one = make(0, 1)
        ranks = [make(r, world) for r in range(world)]
        for epoch in (0, 1):
            for s in (one, *ranks):
                s.set_epoch(epoch)
            ref, outs = batches(one), [batches(s) for s in ranks]
            assert all(len(o) == len(ref) == len(s) for o, s in zip(outs, ranks))
            for i, b in enumerate(ref):
                parts = [o[i] for o in outs]
                assert all(parts)  # every rank gets a share of every batch
                union = sorted(x for p in parts for x in p)
                if (len({ids[r] for r, _ in b}) if exams else len(b)) >= world:
                    assert union == sorted(b)
                    assert sum(len(p) for p in parts) == len(set(union))  # disjoint
                else:  # a last batch too small to share is padded with the epoch's first units
                    assert set(b) <= set(union)
    with pytest.raises(UsclfError, match="cannot be shared by 3 processes"):
        ExamBatchSampler(ids, 2, rank=0, world_size=3)


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    ids = exam_ids(SIZES)
    ref = ExamBatchSampler(ids, exams_per_batch=2, max_images_per_exam=3, seed=9)
    full = {}
    for epoch in range(3):
        ref.set_epoch(epoch)
        full[epoch] = batches(ref)
    run = ExamBatchSampler(ids, exams_per_batch=2, max_images_per_exam=3, seed=9)
    run.set_epoch(1)
    it = iter(run)
    consumed = [next(it) for _ in range(3)]
    assert consumed == full[1][:3]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == 3
    assert run.state_dict(consumed=2)["consumed"] == 2  # trainer's own count wins (loader prefetch)
    resumed = ExamBatchSampler(ids, exams_per_batch=2, max_images_per_exam=3, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the training loop re-announces the epoch: the resume point must survive
    assert batches(resumed) == full[1][3:]
    assert resumed.state_dict()["consumed"] == len(resumed)  # a finished epoch reads as finished
    resumed.set_epoch(2)
    assert resumed.state_dict()["consumed"] == 0
    assert batches(resumed) == full[2]
    with pytest.raises(UsclfError, match="seed"):
        ExamBatchSampler(ids, exams_per_batch=2, seed=1).load_state_dict(state)


def test_random_batch_sampler():
    s = RandomBatchSampler(23, batch_size=5, seed=0)
    out = batches(s)
    assert len(out) == len(s) == 5 and [len(b) for b in out] == [5, 5, 5, 5, 3]
    assert sorted(r for b in out for r, _ in b) == list(range(23))
    s.set_epoch(1)
    assert batches(s) != out
    ranks = [RandomBatchSampler(23, batch_size=4, seed=0, rank=r, world_size=2, drop_last=True) for r in range(2)]
    got = [[r for b in rs for r, _ in b] for rs in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 5 and not set(got[0]) & set(got[1])  # 5 global batches of 4
    assert [len(b) for b in ranks[0]] == [2] * 5
    s2 = RandomBatchSampler(23, batch_size=5, seed=0)
    s2.load_state_dict({"epoch": 0, "consumed": 2})
    assert batches(s2) == out[2:]


def test_bad_sampler_arguments():
    with pytest.raises(UsclfError, match="rank"):
        ExamBatchSampler(exam_ids(SIZES), 2, rank=2, world_size=2)
    with pytest.raises(UsclfError, match="exams_per_batch"):
        ExamBatchSampler(exam_ids(SIZES), 0)
    with pytest.raises(UsclfError, match="no images"):
        ExamBatchSampler([], 2)


# --- Dataset + loader -----------------------------------------------------------------------------

@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    ids = exam_ids(SIZES)
    n = len(ids)
    labels = rng.integers(0, 2, (n, len(CLASSES))).astype(float)
    unl = np.isin(ids, ["ex0", "ex1", "ex2"])
    labels[unl] = np.nan
    df = pd.DataFrame({"image_id": [f"im{i}" for i in range(n)], "path": [f"{i}.png" for i in range(n)],
                       "frame": 0, "exam_id": ids, "patient_id": ids,
                       "split": np.where(unl, "unlabeled", "train"), **dict(zip(CLASSES, labels.T))})
    images = rng.integers(0, 255, (n, 40, 40), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # tag each image with its row
    return save_dataset(tmp_path / "ds", images, df, CLASSES)


def test_dataset_item_views_labels_and_rows(data):
    rows = np.array([2, 5, 7, 11, 30])
    ds = UltrasoundDataset(data, rows=rows, views=("weak", "strong"), aug=AugmentConfig(size=32))
    assert len(ds) == 5 and isinstance(ds.images, np.memmap)
    for i, row in enumerate(rows):
        item = ds[(i, 123)]
        assert len(item["views"]) == 2 and item["row"] == row
        for v in item["views"]:
            assert v.shape == (1, 32, 32) and v.dtype == torch.float32
        exp = data.manifest.loc[row, CLASSES].to_numpy(dtype=float)
        exp = np.where(np.isnan(exp), -1, exp)
        assert torch.equal(item["y"], torch.tensor(exp, dtype=torch.float32))
    unl = np.flatnonzero(data.manifest["split"].to_numpy()[rows] == "unlabeled")
    assert len(unl) and (ds[(int(unl[0]), 0)]["y"] == -1).all()
    # plain int -> one deterministic eval view of the right image
    mean_std = AugmentConfig(size=40, mean=0.0, std=1.0)
    ev = UltrasoundDataset(data, rows=rows, views=("weak", "weak"), aug=mean_std)[3]
    assert len(ev["views"]) == 1
    pixels = data.images[data.manifest.loc[11, "cache_row"]] / 255.0
    assert torch.allclose(ev["views"][0][0], torch.from_numpy(pixels).float())
    # two weak views of one sample are independent draws, same for the same seed
    a, b = ds[(0, 7)], ds[(0, 7)]
    assert torch.equal(a["views"][0], b["views"][0])
    pica = UltrasoundDataset(data, rows=rows, views=("weak", "weak"), aug=AugmentConfig(size=32))[(0, 7)]
    assert not torch.equal(pica["views"][0], pica["views"][1])
    with pytest.raises(UsclfError, match="views"):
        UltrasoundDataset(data, views=("medium",))
    with pytest.raises(UsclfError, match="rows"):
        UltrasoundDataset(data, rows=[999])


def test_pickled_dataset_carries_the_path_not_the_pixels(data, tmp_path):
    big = np.random.default_rng(1).integers(0, 255, (len(data.manifest), 128, 128), dtype=np.uint8)
    data = save_dataset(tmp_path / "big", big, data.manifest, CLASSES)
    ds = UltrasoundDataset(data, aug=AugmentConfig(size=32))
    blob = pickle.dumps(ds)  # what a spawned DataLoader worker receives
    assert len(blob) < big.nbytes / 10
    back = pickle.loads(blob)
    assert isinstance(back.images, np.memmap)
    assert torch.equal(back[(4, 1)]["views"][0], ds[(4, 1)]["views"][0])


def test_collate_stacks_views():
    items = [{"views": [torch.zeros(1, 8, 8), torch.ones(1, 8, 8)], "y": torch.zeros(3), "row": r} for r in (4, 9)]
    out = collate(items)
    assert [v.shape for v in out["views"]] == [(2, 1, 8, 8)] * 2 and out["views"][1].min() == 1
    assert out["y"].shape == (2, 3) and out["row"].tolist() == [4, 9]


def _epoch_tensors(loader):
    return [(b["row"].clone(), [v.clone() for v in b["views"]]) for b in loader]


def test_loader_batches_do_not_depend_on_workers_or_resume(data):
    ds = UltrasoundDataset(data, views=("weak", "strong"), aug=AugmentConfig(size=32))

    def sampler():
        return ExamBatchSampler(ds.exam_ids, exams_per_batch=3, max_images_per_exam=4, seed=2)

    s0 = sampler()
    s0.set_epoch(1)
    ref = _epoch_tensors(make_loader(ds, s0, workers=0))
    for b, (rows, views) in zip(s0, ref):
        assert rows.tolist() == [ds.rows[r] for r, _ in b]
        assert views[0].shape == (len(b), 1, 32, 32)
    s2 = sampler()
    s2.set_epoch(1)
    multi = _epoch_tensors(make_loader(ds, s2, workers=2))
    assert len(multi) == len(ref)
    for (r1, v1), (r2, v2) in zip(ref, multi):
        assert torch.equal(r1, r2) and all(torch.equal(a, b) for a, b in zip(v1, v2))
    sr = sampler()
    sr.load_state_dict({"epoch": 1, "consumed": 2, "seed": 2})
    resumed = _epoch_tensors(make_loader(ds, sr, workers=0))
    assert len(resumed) == len(ref) - 2
    for (r1, v1), (r2, v2) in zip(ref[2:], resumed):
        assert torch.equal(r1, r2) and all(torch.equal(a, b) for a, b in zip(v1, v2))
    # evaluation: plain sequential indices, eval view, deterministic
    ev = list(make_loader(ds, None, batch_size=16))
    assert sum(len(b["row"]) for b in ev) == len(ds) and len(ev[0]["views"]) == 1
