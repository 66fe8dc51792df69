"""FixMatch's combined loader: each step = one labelled batch + one exam-level unlabelled batch.

The two streams have different lengths, so neither defines an epoch. Both are walked endlessly, and the
position of each is the global step `s`: the labelled stream is at batch `s % n_L` of its epoch
`s // n_L` (same for the unlabelled stream with n_U). A Trainer "epoch" is `steps_per_epoch` steps
(semisup: `eval_every`, i.e. one validation), so everything the loader yields is a pure function of
(seeds, step) - `set_epoch(e)` alone restores the start of epoch e, and `state_dict(consumed)` /
`load_state_dict` add the offset inside an epoch: the Trainer's resume contract holds for both samplers.

One DataLoader carries both streams (index lists tagged 0 = labelled, 1 = unlabelled), so worker
processes, prefetching and pinned memory work as for any other stage.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UsclfError
from .dataset import UltrasoundDataset, collate
from .sampler import ExamBatchSampler, RandomBatchSampler, on_device

LABELED, UNLABELED = 0, 1


class _Stream:
    """Endless walk over the epochs of a seeded batch sampler; `seek(pos)` jumps to global batch `pos`."""

    def __init__(self, sampler: RandomBatchSampler | ExamBatchSampler, what: str):
        self.sampler = sampler
        self.n = len(sampler)
        if self.n < 1:
            raise UsclfError(f"the {what} sampler yields no batches")
        self._it: Iterator | None = None
        self._epoch = 0

    def seek(self, pos: int) -> None:
        self._epoch, k = divmod(int(pos), self.n)
        self.sampler.load_state_dict({"epoch": self._epoch, "consumed": k, "seed": self.sampler.seed})
        self._it = iter(self.sampler)

    def next(self) -> list[tuple[int, int]]:
        try:
            return next(self._it)
        except StopIteration:
            self._epoch += 1
            self.sampler.set_epoch(self._epoch)
            self._it = iter(self.sampler)
            return next(self._it)


class StepBatchSampler:
    """Batch sampler yielding, per step, the labelled batch's `(0, row, seed)` items followed by the
    unlabelled batch's `(1, row, seed)` items. Length = `steps_per_epoch`; see the module doc."""

    def __init__(self, labeled: RandomBatchSampler, unlabeled: ExamBatchSampler, steps_per_epoch: int):
        if steps_per_epoch < 1:
            raise UsclfError(f"steps per epoch (eval_every) must be >= 1, got {steps_per_epoch}")
        self.labeled, self.unlabeled = _Stream(labeled, "labelled"), _Stream(unlabeled, "unlabelled")
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = 0
        self._start = 0      # steps of `epoch` consumed before a resume
        self._yielded = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _shape(self) -> dict[str, int]:
        return {"steps_per_epoch": self.steps_per_epoch, "n_labeled": self.labeled.n,
                "n_unlabeled": self.unlabeled.n, "seed_labeled": self.labeled.sampler.seed,
                "seed_unlabeled": self.unlabeled.sampler.seed, "batch_labeled": self.labeled.sampler.batch_size,
                "exams_unlabeled": self.unlabeled.sampler.exams_per_batch}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields (a resume offset survives set_epoch of the same epoch)."""
        if int(epoch) != self.epoch:
            self._start, self._yielded = 0, 0
        self.epoch = int(epoch)

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """{'epoch', 'consumed', ...}; pass the steps the trainer actually used (the loader prefetches)."""
        done = self._start + self._yielded if consumed is None else int(consumed)
        return {"epoch": self.epoch, "consumed": done, **self._shape()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration yields epoch `state['epoch']` from step `state['consumed']` on."""
        saved = {k: int(state[k]) for k in self._shape() if k in state}
        if saved != {k: v for k, v in self._shape().items() if k in saved}:
            raise UsclfError(f"the checkpoint's loader state {saved} does not fit this run's data/config "
                             f"{self._shape()}; resume with the same data and settings")
        self.epoch, self._start, self._yielded = int(state["epoch"]), int(state["consumed"]), 0

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        start, self._yielded = self._start, 0
        pos = self.epoch * self.steps_per_epoch + start
        self.labeled.seek(pos)
        self.unlabeled.seek(pos)
        for _ in range(start, self.steps_per_epoch):
            lab, unl = self.labeled.next(), self.unlabeled.next()
            self._yielded += 1
            yield [(LABELED, r, s) for r, s in lab] + [(UNLABELED, r, s) for r, s in unl]
        self._start, self._yielded = 0, self.steps_per_epoch - start


class PairedDataset(Dataset):
    """Dispatches `(source, row, aug_seed)` to the labelled or the unlabelled UltrasoundDataset."""

    def __init__(self, labeled: UltrasoundDataset, unlabeled: UltrasoundDataset):
        self.parts = (labeled, unlabeled)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, item: tuple[int, int, int]) -> dict[str, Any]:
        src, i, seed = item
        return {**self.parts[src][(i, seed)], "src": src}


def paired_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """{'labeled': collate(labelled items), 'unlabeled': collate(unlabelled items)}."""
    return {"labeled": collate([b for b in batch if b["src"] == LABELED]),
            "unlabeled": collate([b for b in batch if b["src"] == UNLABELED])}


def unlabeled_dataset(data, rows: np.ndarray, aug) -> UltrasoundDataset:
    """Weak + strong views of `rows`, with every label blanked to -1: the unlabelled stream may hold
    train exams outside the label fraction, and FixMatch must never see their labels."""
    ds = UltrasoundDataset(data, rows, views=("weak", "strong"), aug=aug)
    ds.labels = np.full_like(ds.labels, -1.0)
    return ds


def unlabeled_exams_per_step(exam_ids: np.ndarray, mu: int, batch_size: int, cap: int | None) -> int:
    """Exams per unlabelled batch giving about mu * B images: round(mu * B / mean images per exam)."""
    _, counts = np.unique(np.asarray(exam_ids).astype(str), return_counts=True)
    per_exam = np.minimum(counts, cap) if cap else counts
    return max(1, int(round(mu * batch_size / float(per_exam.mean()))))


def fixmatch_loader(labeled: UltrasoundDataset, unlabeled: UltrasoundDataset, batch_size: int,
                    unlabeled_exams: int, max_images_per_exam: int | None, steps_per_epoch: int, seed: int = 0,
                    rank: int = 0, world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """DataLoader whose batches are {'labeled': {...}, 'unlabeled': {...}} (see `StepBatchSampler`).

    Labelled: image-level batches of `batch_size` (last partial batch dropped when there is more than
    one batch: BatchNorm needs > 1 image). Unlabelled: `unlabeled_exams` whole exams per step (each capped
    at `max_images_per_exam` images). The streams use different seeds so their orders are independent.
    Under DDP both sizes are global: each rank takes its share of every step (sampler.py).
    """
    if workers < 0:
        raise UsclfError(f"workers must be >= 0, got {workers}")
    lab = RandomBatchSampler(len(labeled), batch_size, seed=seed, rank=rank, world_size=world_size,
                             drop_last=len(labeled) >= batch_size)
    unl = ExamBatchSampler(unlabeled.exam_ids, unlabeled_exams, max_images_per_exam, seed=seed + 1,
                           rank=rank, world_size=world_size)
    loader = DataLoader(PairedDataset(labeled, unlabeled), batch_sampler=StepBatchSampler(lab, unl, steps_per_epoch),
                        num_workers=workers, collate_fn=paired_collate, persistent_workers=workers > 0,
                        pin_memory=pin_memory and torch.cuda.is_available())
    return on_device(loader, unlabeled.aug)  # augment.backend=device: views made on the training device


def unlabeled_rows(ds, splits: list[str], labelled: np.ndarray, train_rest: bool) -> np.ndarray:
    """Rows of the unlabelled pool: `splits` plus (optionally) train rows outside the labelled subset."""
    split = ds.manifest["split"].to_numpy()
    pool = np.isin(split, list(splits))
    if train_rest:
        rest = split == "train"
        rest[labelled] = False
        pool |= rest
    rows = np.flatnonzero(pool)
    if len(rows) == 0:
        raise UsclfError(f"no unlabelled images in split(s) {', '.join(splits)} of {ds.root}")
    return rows
