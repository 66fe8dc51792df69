"""Shared pieces of the benchmarks (`pipelines/bench.py`, `pipelines/gpu_check.sh`): timing, the forward rate,
the device-augment loader.

    python pipelines/bench.py augment   # loader images/s with augment.backend=cpu vs device, same data,
                                        # same sampler seeds, interleaved rounds; ratios in one run
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from usclf.data.cache import open_dataset
from usclf.data.dataset import UltrasoundDataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.sampler import ExamBatchSampler, make_loader
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.models.heads import build_classifier

VIEWS = {"pretrain (weak+weak)": ("weak", "weak"), "semisup unlabelled (weak+strong)": ("weak", "strong")}


def timed(fn, min_seconds: float = 3.0, warmup: int = 1, min_calls: int = 1) -> tuple[int, float]:
    """Run fn() (returning an item count) repeatedly for at least min_seconds and min_calls; (items, seconds)."""
    for _ in range(warmup):
        fn()
    n, calls, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or calls < min_calls:
        n += fn()
        calls += 1
    return n, time.perf_counter() - t0


def step_rate_infer(size: int, batch: int, with_count: bool = False):
    """Images/s of the ResNet18 multi-label forward alone (timed part only); with_count: (rate, images run,
    warm-up batch included)."""
    model = build_classifier("resnet18", "multilabel", num_classes=7).eval()
    x = torch.randn(batch, 1, size, size)
    with torch.no_grad():
        n, s = timed(lambda: (model(x), batch)[1], 3.0)
    return (n / s, n + batch) if with_count else n / s


def simulated_cache(tmp: Path, exams: int, size: int, seed: int = 1):
    """Simulate `exams` exams at 1.25x `size` and ingest them into a `size` px cache; the open dataset."""
    raw = tmp / f"raw{size}"
    simulate(raw, SimulateConfig(exams=exams, size=int(size * 1.25), seed=seed), progress=False)
    ingest(raw, tmp / f"ds{size}", raw / "labels.csv", IngestConfig(size=size), progress=False)
    return open_dataset(tmp / f"ds{size}")


def augment_loader(ds, size: int, views: tuple[str, ...], backend: str, exams_per_batch: int = 8,
                   workers: int = 0, device: torch.device | str = "cpu", seed: int = 0) -> Any:
    """The training loader (exam batches) of every image of `ds`, views made by `backend`."""
    data = UltrasoundDataset(ds, None, views=views, aug=AugmentConfig(size=size, backend=backend))
    loader = make_loader(data, ExamBatchSampler(data.exam_ids, exams_per_batch, 16, seed=seed), workers,
                         pin_memory=True)
    if callable(getattr(loader, "set_device", None)):
        loader.set_device(device)
    return loader


def loader_epoch_rate(loader: Any, min_seconds: float, device: torch.device | str = "cpu",
                      clock: Any = time.perf_counter) -> float:
    """Source images/s of whole epochs of `loader`, views on `device` (synchronised), >= min_seconds of
    `clock` (wall time; `time.process_time` counts this process's CPU time only, immune to other load)."""
    dev = torch.device(device)
    n, epoch, t0 = 0, 0, clock()
    while True:
        loader.batch_sampler.set_epoch(epoch)
        for b in loader:
            views = b["views"] if "views" in b else b["unlabeled"]["views"]
            n += views[0].shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        epoch += 1
        if clock() - t0 >= min_seconds:
            return n / (clock() - t0)


class TimedLoader:
    """Wraps a training loader and times the steps between batch `warmup` and the last batch fetched.

    A step counts as done when the next batch is asked for, so the rate holds when the Trainer stops at
    `max_steps` (mid-iteration) and covers the loader's time too; the Trainer's `.item()` on each loss
    keeps the device in step. State carries over epochs. Other attributes are the wrapped loader's.
    """

    def __init__(self, loader: Any, warmup: int, count: Any = None):
        self.inner, self.warmup = loader, warmup
        self.count = count or (lambda b: b["views"][0].shape[0])
        self.images, self.seconds = 0, 0.0
        self._i, self._t0, self._prev = 0, None, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        for b in self.inner:
            now = time.perf_counter()
            if self._t0 is not None:
                self.images += self.count(self._prev)
                self.seconds = now - self._t0
            elif self._i == self.warmup:
                self._t0 = now
            self._i += 1
            self._prev = b
            yield b

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def bench_augment(args) -> None:
    """Loader images/s, augment.backend=cpu vs device on this machine's CPU, interleaved rounds (best of)."""
    # One intra-op thread for both: the loader runs beside the training step, which owns the other cores.
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, workers {args.workers}, "
          f"{args.exams} simulated exams")
    sizes = sorted({64, args.size})
    with tempfile.TemporaryDirectory() as d:
        ds = simulated_cache(Path(d), args.exams, max(sizes))
        print(f"{'':>5} {'':<34} {'images per CPU-second':^36} {'images per wall-second':^36}")
        print(f"{'size':>5} {'views':<34}" + f" {'cpu backend':>12} {'device backend':>14} {'device/cpu':>10}" * 2)
        for size in sizes:
            for name, views in VIEWS.items():
                loaders = {b: augment_loader(ds, size, views, b, workers=args.workers) for b in ("cpu", "device")}
                best = {(b, c): 0.0 for b in loaders for c in ("cpu", "wall")}
                for _ in range(args.rounds):  # interleaved: the machine's load drifts between rounds
                    for b, ld in loaders.items():
                        for c, clock in (("cpu", time.process_time), ("wall", time.perf_counter)):
                            best[b, c] = max(best[b, c], loader_epoch_rate(ld, args.seconds / 2, clock=clock))
                cols = "".join(f" {best['cpu', c]:>12.0f} {best['device', c]:>14.0f} "
                               f"{best['device', c] / best['cpu', c]:>9.2f}x" for c in ("cpu", "wall"))
                print(f"{size:>5} {name:<34}{cols}")
    print("source images (each yields two views); best of interleaved rounds per backend. CPU-seconds count this\n"
          "process only (workers=0, one thread), so they hold when the machine is shared; wall-seconds do not.")
