"""DDP plumbing: torchrun setup, rank helpers, and an all-gather that keeps gradients.

PICA/LSD need batch-level cluster statistics, so under DDP each rank gathers the probabilities of the
global batch with `gather_with_grad` and computes the loss on it; the gradients then match those of one
process on the concatenated batch (see `_GatherWithGrad` for why).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UsclfError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsclfError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the torchrun job described by RANK / WORLD_SIZE / LOCAL_RANK (no-op for a single process).

    Backend: `nccl` when CUDA is available, else `gloo`. On GPU the process is pinned to cuda:LOCAL_RANK.
    `timeout_s`: how long a collective waits for the slowest rank; when None, USCLF_DIST_TIMEOUT_MIN minutes
    (default 120; torch's are 10 for nccl, 30 for gloo): in training the other ranks wait in a collective
    while rank 0 validates and writes the model file and its report.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world <= 1:
        return DistInfo()
    if not 0 <= rank < world:
        raise UsclfError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UsclfError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun")
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise UsclfError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(local)
    timeout = (timedelta(minutes=_env_int("USCLF_DIST_TIMEOUT_MIN", 120)) if timeout_s is None
               else timedelta(seconds=timeout_s))
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    if attempt == 0:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    else:  # torchrun keeps its store across restarts: the dead attempt's rank addresses are still in it
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        store.set_timeout(timeout)
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"usclf/attempt_{attempt}", store),
                                rank=rank, world_size=world, timeout=timeout)
    return DistInfo(rank, world, local, backend)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (callers add the rank so ranks differ)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu; explicit names are checked."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsclfError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsclfError(f"device '{name}' asked for but CUDA is not available")
    return dev


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_dist_info() -> DistInfo:
    """Rank / world size of the current process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()),
                        dist.get_backend())
    return DistInfo()


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate a tensor along dim 0 across ranks; rows may differ in number per rank.

    Choice: own autograd function (all_gather forward, all_reduce-SUM + local slice backward) rather than
    torch.distributed.nn.functional.all_gather, because exam-level batches give ranks different row
    counts, which that function does not support. Every rank computes the same loss L on the gathered
    batch, so the summed upstream gradient for rank r's rows is world_size * dL/dP_r; DDP then averages
    parameter gradients over ranks (divides by world_size), which leaves exactly dL/dtheta of one
    process on the concatenated batch. No loss scaling is needed (tests/test_ddp.py checks it).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        rank = dist.get_rank()
        n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        top = max(counts)
        padded = t.new_zeros((top, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.start = sum(counts[:rank])
        ctx.stop = ctx.start + counts[rank]
        return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start: ctx.stop]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """All ranks' `t` concatenated along dim 0 (rank order), differentiable; identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    return _GatherWithGrad.apply(t)


def all_reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Average a dict of floats over ranks (every rank must pass the same keys, in any order)."""
    info = get_dist_info()
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s picklable object on every rank (identity without DDP)."""
    if not get_dist_info().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank ([obj] without DDP)."""
    info = get_dist_info()
    if not info.distributed:
        return [obj]
    box = [None] * info.world_size
    dist.all_gather_object(box, obj)
    return box


def any_across_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on at least one (so all ranks stop together)."""
    if not get_dist_info().distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_weights(counts: list[int], device: torch.device | str = "cpu") -> list[float]:
    """Per count n_r of this rank's rows: n_r * world_size / (sum of n over ranks), 1.0 without DDP.

    A rank's mean loss over its n_r rows times this weight, averaged over ranks by DDP, is the mean over
    all ranks' rows: the gradient of one process on the global batch, whatever each rank's share of it."""
    info = get_dist_info()
    if not info.distributed:
        return [1.0] * len(counts)
    t = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=device)
    total = t.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [float(n) * info.world_size / float(s) if s > 0 else 0.0 for n, s in zip(t.tolist(), total.tolist())]


def run_on_main(fn, what: str):
    """`fn()` on rank 0 only (writing files, MLflow); the other ranks wait for it. Rank 0's result is
    returned on rank 0 (None elsewhere); if it raises, every rank raises (the others: a UsclfError naming
    `what` and the message), so no rank waits on a rank that died."""
    info = get_dist_info()
    if not info.distributed:
        return fn()
    result, failure = None, None
    if info.is_main:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = e
    message = broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise UsclfError(f"{what} failed on rank 0 ({message})")
    return result


def elastic_restart() -> bool:
    """True in a job that torchrun restarted after a failure (`--max-restarts`): resume, don't start over."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0
