"""Batch samplers (docs/design.md §3.5, paper Sec. 3.2) and the DataLoader factory.

Both samplers yield lists of `(index, aug_seed)` pairs. `aug_seed` is a pure function of (sampler seed,
epoch, rank, batch index, position in batch), so augmentations never depend on worker processes, and a
run resumed mid-epoch (`load_state_dict`) sees exactly the batches - rows and seeds - of an
uninterrupted one.

DDP: every rank builds the same shuffled list for the epoch and takes a disjoint slice of it. To give
every rank the same number of batches, the list is padded by repeating its first items when
`drop_last=False` (like torch's DistributedSampler) and truncated to a multiple of `world_size` when
`drop_last=True`.
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


def _aug_seeds(seed: int, epoch: int, rank: int, batch_idx: int, n: int) -> np.ndarray:
    """n uint32 augmentation seeds for one batch, a pure function of its coordinates."""
    return np.random.SeedSequence([seed, epoch, rank, batch_idx]).generate_state(n, dtype=np.uint32)


def _rank_slice(items: np.ndarray, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """This rank's disjoint share of a shuffled list; equal length on every rank (pad or truncate)."""
    n = len(items)
    if world_size == 1:
        return items
    if drop_last:
        items = items[: n - n % world_size]
    else:
        per_rank = math.ceil(n / world_size)
        pad = per_rank * world_size - n
        items = np.concatenate([items, np.resize(items, pad)]) if pad else items
    return items[rank::world_size]


class _SeededBatchSampler:
    """Shared epoch / resume bookkeeping; subclasses implement `_epoch_groups`."""

    def __init__(self, seed: int, rank: int, world_size: int, drop_last: bool):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsclfError(f"sampler: rank {rank} is not valid for world_size {world_size}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._skip = 0       # batches of `epoch` already consumed before a resume
        self._yielded = 0    # batches handed out in the current iteration

    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
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
        """Resume: the next iteration yields epoch `state['epoch']` from batch `state['consumed']` on."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise UsclfError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch = int(state["epoch"])
        self._skip = int(state["consumed"])
        self._yielded = 0

    def _batches(self, n_units: int, per_batch: int) -> int:
        """Batches per epoch on one rank, for `n_units` exams/rows grouped `per_batch` at a time."""
        per_rank = n_units // self.world_size if self.drop_last else math.ceil(n_units / self.world_size)
        return per_rank // per_batch if self.drop_last else math.ceil(per_rank / per_batch)

    def __len__(self) -> int:
        """Batches per (full) epoch on this rank."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        groups = self._epoch_groups(self.epoch)
        start = self._skip
        self._yielded = 0
        for b in range(start, len(groups)):
            rows = groups[b]
            seeds = _aug_seeds(self.seed, self.epoch, self.rank, b, len(rows))
            self._yielded += 1
            yield [(int(r), int(s)) for r, s in zip(rows, seeds)]
        # Epoch done: state_dict() now says so; iterating again without set_epoch repeats the epoch.
        self._skip, self._yielded = 0, len(groups)


class ExamBatchSampler(_SeededBatchSampler):
    """Each batch = the images of `exams_per_batch` exams drawn without replacement (paper: 16 exams).

    An exam with more than `max_images_per_exam` images contributes a random subset of that size.
    An epoch visits every exam once; order and subsets are a function of (seed, epoch).
    """

    def __init__(self, exam_ids: Sequence | np.ndarray, exams_per_batch: int = 16,
                 max_images_per_exam: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        super().__init__(seed, rank, world_size, drop_last)
        if exams_per_batch < 1:
            raise UsclfError(f"exams_per_batch must be >= 1, got {exams_per_batch}")
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
        if len(exams) < world_size and drop_last:
            raise UsclfError(f"exam sampler: {len(exams)} exam(s) cannot be shared by {world_size} ranks")

    def __len__(self) -> int:
        return self._batches(len(self.exams), self.exams_per_batch)

    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.exams))
        cap = self.max_images_per_exam
        # Subsets are drawn for every exam in the global order so all ranks agree on them.
        rows = []
        for e in perm:
            r = self.exam_rows[e]
            rows.append(np.sort(rng.choice(r, size=cap, replace=False)) if cap and len(r) > cap else r)
        mine = _rank_slice(np.arange(len(perm)), self.rank, self.world_size, self.drop_last)
        t = self.exams_per_batch
        return [np.concatenate([rows[i] for i in mine[b * t:(b + 1) * t]]) for b in range(len(self))]


class RandomBatchSampler(_SeededBatchSampler):
    """Image-level batches of `batch_size` rows drawn without replacement (supervised fine-tuning)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        super().__init__(seed, rank, world_size, drop_last)
        if n < 1:
            raise UsclfError("random sampler: no images to sample from")
        if batch_size < 1:
            raise UsclfError(f"batch_size must be >= 1, got {batch_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return self._batches(self.n, self.batch_size)

    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        mine = _rank_slice(perm, self.rank, self.world_size, self.drop_last)
        b = self.batch_size
        return [mine[i * b:(i + 1) * b] for i in range(len(self))]


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
