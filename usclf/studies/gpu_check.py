"""One-call GPU check (run by pipelines/gpu_check.sh; at most ~8 minutes on one GPU).

    pipelines/gpu_check.sh             # CUDA: ResNet18, 224 px, AMP bf16 + channels_last, augment.backend=device
    pipelines/gpu_check.sh --dry-run   # the same code path on the CPU at 32 px (a CI test, < 2 minutes)

Prints images/s (source images; two views each) of: the raw two-view training step on random tensors,
the full pretrain step with data (exam loader + device augmentation + Trainer), the full semisup step
(labelled weak + unlabelled weak/strong, FixMatch two-head), the data loader's ceiling (loader alone,
both augmentation backends), peak GPU memory of each run, and the estimated wall time of the paper's
protocol (85k images x 100 epochs of pretraining). Every run goes through usclf's own Trainer, samplers,
datasets and DeviceAugmentLoader; `--ddp` (under torchrun) runs the pretrain step on every rank.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from usclf.data.dataset import UltrasoundDataset
from usclf.data.sampler import ExamBatchSampler, make_loader
from usclf.data.transforms import AugmentConfig
from usclf.methods.clustering import PICA
from usclf.models.heads import build_classifier
from usclf.studies.bench_device import (TimedLoader, augment_loader, loader_epoch_rate, simulated_cache)
from usclf.train.distributed import cleanup_distributed, init_distributed
from usclf.train.loop import TrainConfig, Trainer

PAPER_IMAGES, PAPER_EPOCHS = 85_000, 100  # paper Sec. 3.2: 84,967 unlabelled images, 100 pretraining epochs


@dataclass
class Plan:
    device: torch.device
    size: int
    batch: int       # source images per pretrain step (two views each)
    exams: int       # simulated exams
    warmup: int      # steps not timed
    steps: int       # timed steps per run
    seconds: float   # per loader-ceiling measurement
    workers: int


def make_plan(args) -> Plan:
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device; run with --dry-run for the CPU check")
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if args.dry_run:
        return Plan(dev, args.size or 32, args.batch or 16, args.exams or 6, 1, args.steps or 3, 0.5,
                    args.workers if args.workers is not None else 0)
    workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 2))
    return Plan(dev, args.size or 224, args.batch or 256, args.exams or 80, 5, args.steps or 40, 10.0, workers)


class RepeatBatch:
    """`n` copies of one batch already on the device: the raw step, no data path at all."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.n):
            yield self.batch


def _train(model, step_fn, loader: TimedLoader, plan: Plan, out: Path) -> dict[str, float]:
    """Trainer.fit for warmup + steps steps (AMP bf16 + channels_last on CUDA; no checkpoints until the
    end); images/s over the timed steps and the peak memory."""
    cuda = plan.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(plan.device)
    cfg = TrainConfig(epochs=10**6, max_steps=plan.warmup + plan.steps, amp=True, channels_last=True,
                      ckpt_every=None, ckpt_epochs=10**6, deterministic=False, progress=False,
                      device=str(plan.device), restore_best=False)
    Trainer(model, cfg, step_fn, out).fit(loader)
    mem = torch.cuda.max_memory_allocated(plan.device) / 2**30 if cuda else float("nan")
    return {"images_per_s": loader.rate, "peak_gib": mem}


def raw_step(plan: Plan, out: Path) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_classifier("resnet18", "cluster", num_clusters=11)
    x = [torch.randn(plan.batch, 1, plan.size, plan.size, device=plan.device) for _ in range(2)]
    loader = TimedLoader(RepeatBatch({"views": x}, plan.warmup + plan.steps + 1), plan.warmup)
    return _train(model, PICA({"lam": 2.0}), loader, plan, out / "raw")


def exams_per_batch(exam_ids: np.ndarray, batch: int, cap: int = 16) -> int:
    _, counts = np.unique(exam_ids.astype(str), return_counts=True)
    return max(1, int(round(batch / float(np.minimum(counts, cap).mean()))))


def pretrain_loader(ds, plan: Plan, backend: str = "device", rank: int = 0, world: int = 1):
    data = UltrasoundDataset(ds, None, views=("weak", "weak"), aug=AugmentConfig(size=plan.size, backend=backend))
    # exams_per_batch is the global batch: `world` times one GPU's, so each rank keeps plan.batch images
    sampler = ExamBatchSampler(data.exam_ids, exams_per_batch(data.exam_ids, plan.batch) * world, 16, seed=0,
                               rank=rank, world_size=world)
    return make_loader(data, sampler, plan.workers, pin_memory=True)


def pretrain_step(ds, plan: Plan, out: Path, rank: int = 0, world: int = 1) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_classifier("resnet18", "cluster", num_clusters=11)
    loader = TimedLoader(pretrain_loader(ds, plan, rank=rank, world=world), plan.warmup)
    return _train(model, PICA({"lam": 2.0}), loader, plan, out / "pretrain")


def semisup_step(ds, plan: Plan, out: Path) -> dict[str, float]:
    """FixMatch two-head with mu = 7 (paper): B/8 labelled weak + ~7B/8 unlabelled weak+strong per step."""
    from usclf.methods import method_class
    from usclf.methods.semisup_base import MethodSetup
    from usclf.data.unlabeled_loader import fixmatch_loader, unlabeled_dataset, unlabeled_exams_per_step
    aug = AugmentConfig(size=plan.size, backend="device")
    labels = ds.labels()
    exams = ds.manifest["exam_id"].astype(str).to_numpy()
    first_half = np.isin(exams, np.unique(exams)[: max(1, len(np.unique(exams)) // 2)])
    lab_rows = np.flatnonzero(first_half & ~np.isnan(labels).any(1))
    unl_rows = np.arange(len(labels))
    setup = MethodSetup(classes=list(ds.classes), y_labeled=labels[lab_rows].astype(int), diagnostics=False)
    method = method_class("semisup", "fixmatch-twohead")(setup, None)
    torch.manual_seed(0)
    model = build_classifier("resnet18", method.head, **method.model_sizes())
    labeled = UltrasoundDataset(ds, lab_rows, views=("weak",), aug=aug)
    unlabeled = unlabeled_dataset(ds, unl_rows, aug)
    b_l = max(2, plan.batch // 8)
    t_u = unlabeled_exams_per_step(unlabeled.exam_ids, 7, b_l, 16)
    loader = fixmatch_loader(labeled, unlabeled, b_l, t_u, 16, plan.warmup + plan.steps + 1, seed=0,
                             workers=plan.workers, pin_memory=True)
    count = lambda b: b["labeled"]["views"][0].shape[0] + b["unlabeled"]["views"][0].shape[0]  # noqa: E731
    return _train(model, method, TimedLoader(loader, plan.warmup, count), plan, out / "semisup")


def loader_ceiling(ds, plan: Plan) -> dict[str, float]:
    """Images/s of the pretrain loader alone: device backend (views made on plan.device) and cpu backend."""
    res = {}
    for backend in ("device", "cpu"):
        ld = augment_loader(ds, plan.size, ("weak", "weak"), backend, exams_per_batch(
            ds.manifest["exam_id"].astype(str).to_numpy(), plan.batch), plan.workers, plan.device)
        loader_epoch_rate(ld, min(1.0, plan.seconds / 4), plan.device)  # warm-up (workers start)
        res[backend] = loader_epoch_rate(ld, plan.seconds, plan.device)
    return res


def hours(images_per_s: float, gpus: int = 1) -> float:
    return PAPER_IMAGES * PAPER_EPOCHS / (images_per_s * gpus) / 3600


def run_ddp(plan: Plan, tmp: Path) -> int:
    info = init_distributed()
    try:
        ds = simulated_cache(tmp, plan.exams, plan.size)
        r = pretrain_step(ds, plan, tmp, info.rank, info.world_size)
        rates = [None] * info.world_size
        if info.distributed:
            torch.distributed.all_gather_object(rates, r["images_per_s"])
        else:
            rates = [r["images_per_s"]]
        if info.rank == 0:
            total = float(sum(rates))
            print(f"DDP {info.world_size} processes ({info.backend or 'none'}), full pretrain step: {total:8.1f} im/s "
                  f"in all ({', '.join(f'{x:.1f}' for x in rates)} per rank); paper protocol ~{hours(total):.1f} h")
    finally:
        cleanup_distributed()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, 32 px, a few steps: the same code path")
    p.add_argument("--ddp", action="store_true", help="under torchrun: the pretrain step on every rank")
    p.add_argument("--size", type=int, default=None, help="image side (224; dry run 32)")
    p.add_argument("--batch", type=int, default=None, help="source images per step (256; dry run 16)")
    p.add_argument("--exams", type=int, default=None, help="simulated exams (80; dry run 6)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (40; dry run 3)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (min(8, cores - 2); dry run 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    plan = make_plan(args)
    if plan.device.type == "cpu":
        torch.set_num_threads(1)  # the dry run shares a small CI machine; more threads thrash there
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.ddp:
            return run_ddp(plan, tmp)
        t0 = time.perf_counter()
        name = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "cpu"
        print(f"gpu_check: {name}, torch {torch.__version__}, {plan.size} px, {plan.batch} images/step x 2 views, "
              f"{plan.steps} timed steps after {plan.warmup}, workers {plan.workers}"
              + (" [DRY RUN]" if args.dry_run else ""))
        ds = simulated_cache(tmp, plan.exams, plan.size)
        print(f"  data: {len(ds.manifest)} simulated images, {plan.exams} exams ({time.perf_counter() - t0:.0f} s)")
        res: dict[str, Any] = {"device": name, "size": plan.size, "batch": plan.batch}
        for key, fn in (("raw", lambda: raw_step(plan, tmp)), ("pretrain", lambda: pretrain_step(ds, plan, tmp)),
                        ("semisup", lambda: semisup_step(ds, plan, tmp))):
            res[key] = fn()
        res["loader"] = loader_ceiling(ds, plan)
        raw, pre, semi, ld = res["raw"], res["pretrain"], res["semisup"], res["loader"]
        mem = lambda r: f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] == r["peak_gib"] else ""  # noqa: E731
        print(f"  raw two-view step (random tensors)  {raw['images_per_s']:9.1f} im/s{mem(raw)}")
        print(f"  full pretrain step (PICA, data)     {pre['images_per_s']:9.1f} im/s{mem(pre)}  "
              f"= {pre['images_per_s'] / raw['images_per_s']:.2f} of raw")
        print(f"  full semisup step (FixMatch, mu=7)  {semi['images_per_s']:9.1f} im/s{mem(semi)}")
        print(f"  loader ceiling, device augment      {ld['device']:9.1f} im/s  "
              f"(cpu augment {ld['cpu']:.1f} im/s, {plan.workers} workers)")
        res["paper_hours_1gpu"], res["paper_hours_4gpu_linear"] = hours(pre["images_per_s"]), hours(
            pre["images_per_s"], 4)
        print(f"  paper protocol ({PAPER_IMAGES} images x {PAPER_EPOCHS} epochs pretraining): "
              f"~{res['paper_hours_1gpu']:.1f} h on this device, ~{res['paper_hours_4gpu_linear']:.1f} h on 4 "
              f"(linear scaling)")
        print(f"  total {time.perf_counter() - t0:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
