"""Batch samplers (docs/design.md §3.5, paper Sec. 3.2) and the DataLoader factory.

Both samplers yield lists of `(index, aug_seed)` pairs. `aug_seed` is a pure function of (sampler seed,
epoch, batch index, position in the global batch), so augmentations never depend on worker processes
or on the number of processes, and a run resumed mid-epoch (`load_state_dict`) sees exactly the
batches - rows and seeds - of an uninterrupted one.

DDP: the batch size (`batch_size` images, `exams_per_batch` exams) is the GLOBAL batch. Every rank
draws the same epoch order and the same global batches; rank r takes units (exams, or images) r, r+W,
r+2W, ... of each global batch, with the seeds those units have in it. The union of the ranks' batches
is the batch one process draws with the same settings, so W processes see the data of one (the loss
and BatchNorm decide whether they also compute the same step: docs/performance.md). Every rank has the
same number of batches; a last partial batch too small to give each rank a unit is padded with the
epoch's first units (`drop_last=False`), or dropped with the other partial batch (`drop_last=True`).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UsclfError
from .dataset import collate

Batch = list[tuple[int, int]]


def _aug_seeds(seed: int, epoch: int, batch_idx: int, n: int) -> np.ndarray:
    """n uint32 augmentation seeds for one global batch, a pure function of its coordinates (the 0 is the
    rank field of earlier versions: seeds of one-process runs are unchanged)."""
    return np.random.SeedSequence([seed, epoch, 0, batch_idx]).generate_state(n, dtype=np.uint32)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l)."""
    lens = np.asarray(lens, dtype=np.int64)
    if lens.size == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lens) - lens
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lens) + np.arange(int(lens.sum()))


class _SeededBatchSampler:
    """Shared epoch / resume / rank bookkeeping; subclasses implement `_epoch_units` and `_n_units`."""

    def __init__(self, seed: int, rank: int, world_size: int, drop_last: bool, per_batch: int, unit: str):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsclfError(f"sampler: rank {rank} is not valid for world_size {world_size}")
        if per_batch < world_size:
            raise UsclfError(f"a batch of {per_batch} {unit} cannot be shared by {world_size} processes: the batch "
                             f"size is the global one, set it to at least {world_size}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.per_batch = int(per_batch)
        self.epoch = 0
        self._skip = 0       # batches of `epoch` already consumed before a resume
        self._yielded = 0    # batches handed out in the current iteration

    def _n_units(self) -> int:
        raise NotImplementedError

    def _epoch_units(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's draw: all rows in draw order and the row count of each unit (exam or image)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (a resume point survives set_epoch of
        the same epoch)."""
        if int(epoch) != self.epoch:
            self._skip, self._yielded = 0, 0
        self.epoch = int(epoch)

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """{'epoch', 'consumed'}. A DataLoader prefetches ahead of training, so pass the number of
        batches the trainer actually used this epoch as `consumed`; by default the number yielded."""
        done = self._skip + self._yielded if consumed is None else int(consumed)
        return {"epoch": self.epoch, "consumed": done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration yields epoch `state['epoch']` from batch `state['consumed']` on
        (global batches: a resume may use another number of processes)."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise UsclfError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch = int(state["epoch"])
        self._skip = int(state["consumed"])
        self._yielded = 0

    def __len__(self) -> int:
        """Batches per (full) epoch, the same on every rank."""
        n = self._n_units()
        return n // self.per_batch if self.drop_last else math.ceil(n / self.per_batch)

    def _unit_order(self, n: int) -> np.ndarray:
        """Indices into the epoch's units, batch after batch: truncated (drop_last) or with a last batch
        padded from the first units so that each rank gets one (never with one process)."""
        units = np.arange(min(n, len(self) * self.per_batch))
        rest = len(units) % self.per_batch
        if not self.drop_last and 0 < rest < self.world_size:
            units = np.concatenate([units, np.resize(np.arange(n), self.world_size - rest)])
        return units

    def __iter__(self) -> Iterator[Batch]:
        flat, sizes = self._epoch_units(self.epoch)
        starts = np.cumsum(sizes) - sizes
        units, t, n_batches = self._unit_order(len(sizes)), self.per_batch, len(self)
        start = self._skip
        self._yielded = 0
        for b in range(start, n_batches):
            u = units[b * t:(b + 1) * t]
            lens = sizes[u]
            seeds = _aug_seeds(self.seed, self.epoch, b, int(lens.sum()))
            mine = slice(self.rank, None, self.world_size)
            rows = flat[_ranges(starts[u][mine], lens[mine])]
            own = seeds[_ranges((np.cumsum(lens) - lens)[mine], lens[mine])]
            self._yielded += 1
            yield [(int(r), int(s)) for r, s in zip(rows, own)]
        # Epoch done: state_dict() now says so; iterating again without set_epoch repeats the epoch.
        self._skip, self._yielded = 0, n_batches


class ExamBatchSampler(_SeededBatchSampler):
    """Each batch = the images of `exams_per_batch` exams drawn without replacement (paper: 16 exams).

    An exam with more than `max_images_per_exam` images contributes a random subset of that size.
    An epoch visits every exam once; order and subsets are a function of (seed, epoch).
    """

    def __init__(self, exam_ids: Sequence | np.ndarray, exams_per_batch: int = 16,
                 max_images_per_exam: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        if exams_per_batch < 1:
            raise UsclfError(f"exams_per_batch must be >= 1, got {exams_per_batch}")
        super().__init__(seed, rank, world_size, drop_last, exams_per_batch, "exams")
        if max_images_per_exam is not None and max_images_per_exam < 1:
            raise UsclfError(f"max_images_per_exam must be >= 1 or null, got {max_images_per_exam}")
        ids = np.asarray(exam_ids)
        if ids.size == 0:
            raise UsclfError("exam sampler: no images to sample from")
        exams, first, inverse = np.unique(ids.astype(str), return_index=True, return_inverse=True)
        # Number exams by first appearance, not by id: ids are salted hashes (new salt = new order) while
        # the rows come in file order, so the seeded draw depends on the data and the seed alone.
        rank_of = np.empty(len(exams), dtype=np.int64)
        rank_of[np.argsort(first, kind="stable")] = np.arange(len(exams))
        exams, inverse = exams[np.argsort(first, kind="stable")], rank_of[inverse.reshape(-1)]
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(exams)))[:-1]
        self.exams = exams
        self.exam_rows: list[np.ndarray] = np.split(order, bounds)
        self.exams_per_batch = int(exams_per_batch)
        self.max_images_per_exam = max_images_per_exam

    def _n_units(self) -> int:
        return len(self.exams)

    def _epoch_units(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.exams))
        cap = self.max_images_per_exam
        # Subsets are drawn for every exam in the global order so all ranks agree on them.
        rows = []
        for e in perm:
            r = self.exam_rows[e]
            rows.append(np.sort(rng.choice(r, size=cap, replace=False)) if cap and len(r) > cap else r)
        return np.concatenate(rows), np.array([len(r) for r in rows], dtype=np.int64)


class RandomBatchSampler(_SeededBatchSampler):
    """Image-level batches of `batch_size` rows drawn without replacement (supervised fine-tuning)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        if n < 1:
            raise UsclfError("random sampler: no images to sample from")
        if batch_size < 1:
            raise UsclfError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(seed, rank, world_size, drop_last, batch_size, "images")
        self.n = int(n)
        self.batch_size = int(batch_size)

    def _n_units(self) -> int:
        return self.n

    def _epoch_units(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n), np.ones(self.n, dtype=np.int64)


def make_loader(dataset: Dataset, sampler: _SeededBatchSampler | None = None, workers: int = 0,
                pin_memory: bool = False, batch_size: int = 64) -> DataLoader:
    """DataLoader over `dataset` with a batch sampler (training) or sequential `batch_size` batches of
    plain indices (evaluation: eval transform, no randomness). Persistent workers when workers > 0."""
    if workers < 0:
        raise UsclfError(f"workers must be >= 0, got {workers}")
    kw = dict(num_workers=workers, pin_memory=pin_memory and torch.cuda.is_available(),
              collate_fn=collate, persistent_workers=workers > 0)
    if sampler is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kw)
    return on_device(DataLoader(dataset, batch_sampler=sampler, **kw), getattr(dataset, "aug", None))


def on_device(loader: DataLoader, aug) -> Any:
    """`loader` itself, or wrapped in a DeviceAugmentLoader when `aug.backend` is 'device'."""
    if aug is None or getattr(aug, "backend", "cpu") != "device":
        return loader
    from .device_augment import DeviceAugmentLoader
    return DeviceAugmentLoader(loader, aug)
