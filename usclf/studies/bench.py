"""Throughput benchmarks; speed claims in the README and closing notes come from this output.

    python pipelines/bench.py data      # ingest frames/s; loader (sampler + weak/strong transforms) vs
                                        # ResNet18 two-view training step, at 64 and 128 px
    python pipelines/bench.py pipeline  # full pretrain step with data vs the raw model step (same batch
                                        # shape); naive decode-every-step loader vs the memory-mapped cache
    python pipelines/bench.py predict   # `usclf predict` images/s from files vs the model alone
    python pipelines/bench.py ingest    # ingest frames/s, PNG and DICOM, decoding in 0 / 1 / 2 / all-core workers
    python pipelines/bench.py augment   # loader images/s, augment.backend=cpu vs device (usclf/studies/bench_device.py)
    python pipelines/bench.py archive   # ingest, cache, loader, predict + peak RSS on a simulated export of
                                        # --frames (20000) frames at 224 px (usclf/studies/bench_archive.py)
Ratios are measured in one run, since these machines are noisy.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


from usclf.data.cache import open_dataset
from usclf.data.dataset import UltrasoundDataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.sampler import ExamBatchSampler, make_loader
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig
from usclf.losses.pica import pica_loss
from usclf.models.heads import build_classifier
from usclf.studies.bench_device import step_rate_infer, timed


def bench_ingest(tmp: Path, exams: int, size: int, workers: int = 0, fmt: str = "png") -> float:
    raw = tmp / f"raw_{fmt}"
    if not raw.is_dir():
        simulate(raw, SimulateConfig(exams=exams, size=int(size * 1.5), seed=1, format=fmt), progress=False)
    t0 = time.perf_counter()
    res = ingest(raw, tmp / f"ds{size}_w{workers}_{fmt}", raw / "labels.csv", IngestConfig(size=size, workers=workers),
                 progress=False)
    return res.n_frames_kept / (time.perf_counter() - t0)


def bench_ingest_workers(args) -> None:
    """Ingest frames/s with decoding in 0 (in-process), 1, 2 and all-core worker processes."""
    cores = os.cpu_count() or 1
    print(f"ingest, {args.exams} simulated exams at {args.size} px, {cores} cores")
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("png", "dicom"):
            base = None
            for w in sorted({0, 1, 2, cores}):
                rate = bench_ingest(Path(d), args.exams, args.size, workers=w, fmt=fmt)
                base = base or rate
                print(f"  {fmt:<6} workers={w:<3} {rate:8.1f} frames/s  ({rate / base:.2f}x in-process)")


def loader_rate(ds, size: int, views: tuple[str, ...], batch_exams: int, workers: int) -> float:
    aug = AugmentConfig(size=size)
    data = UltrasoundDataset(ds, None, views=views, aug=aug)
    sampler = ExamBatchSampler(data.exam_ids, batch_exams, 16, seed=0)
    loader = make_loader(data, sampler, workers)
    state = {"epoch": 0}

    def one_epoch() -> int:
        sampler.set_epoch(state["epoch"])
        state["epoch"] += 1
        return sum(b["views"][0].shape[0] for b in loader)
    n, s = timed(one_epoch, 3.0)
    return n / s


def step_rate(size: int, batch: int, k: int = 11) -> float:
    """ResNet18 (1 channel) + cluster head, two views in one forward pass, PICA loss, Adam step."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", "cluster", num_clusters=k)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(2 * batch, 1, size, size)

    def step() -> int:
        p = model(x)
        loss, _ = pica_loss(p[:batch], p[batch:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch
    n, s = timed(step, 4.0, min_calls=5)  # at 224 px a step takes seconds: 4 s alone would time one or two
    return n / s


def bench_data(args) -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rate = bench_ingest(tmp, args.exams, 128)
        print(f"ingest (decode + Doppler check + crop + resize + cache write), 128 px: {rate:8.1f} frames/s")
        ds = open_dataset(tmp / "ds128")
        print(f"{'size':>5} {'loader weak+weak':>17} {'loader weak+strong':>19} {'ResNet18 2-view step':>21} "
              f"{'ratio (worst loader/step)':>26}")
        for size in (64, 128):
            ww = loader_rate(ds, size, ("weak", "weak"), 8, args.workers)
            ws = loader_rate(ds, size, ("weak", "strong"), 8, args.workers)
            st = step_rate(size, args.batch)
            ratio = min(ww, ws) / st
            verdict = "ok (>= 10x)" if ratio >= 10 else "BELOW 10x"
            print(f"{size:>5} {ww:>13.0f} im/s {ws:>15.0f} im/s {st:>17.1f} im/s {ratio:>20.1f}x {verdict}")
    print("images/s count source images; each yields two augmented views (loader) / two forward passes (step).")


def _decode_every_step_rate(raw: Path, size: int, n: int = 200) -> float:
    """Naive loader: read + clean each file from disk every time it is used (what the cache avoids)."""
    from usclf.data.preprocess import prepare_frame
    from usclf.data.readers import Frame, iter_frames
    from usclf.data.transforms import build_transform
    files = sorted(raw.rglob("*.png"))[:n]
    tf = build_transform("weak", AugmentConfig(size=size))

    def one_pass() -> int:
        k = 0
        for f in files:
            for fr in iter_frames(f):
                if isinstance(fr, Frame):
                    img, _ = prepare_frame(fr.array, size)
                    if img is not None:
                        tf(img, k)
                        tf(img, k + 1)
                        k += 1
        return k
    items, s = timed(one_pass, 3.0, warmup=0)
    return items / s


def bench_pipeline(args) -> None:
    from usclf.methods.clustering import PICA
    from usclf.train.loop import TrainConfig, Trainer
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    size = args.size
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = tmp / "raw"
        simulate(raw, SimulateConfig(exams=args.exams, size=int(size * 1.5), seed=1), progress=False)
        ingest(raw, tmp / "ds", raw / "labels.csv", IngestConfig(size=size), progress=False)
        ds = open_dataset(tmp / "ds")
        data = UltrasoundDataset(ds, None, views=("weak", "weak"), aug=AugmentConfig(size=size))
        sampler = ExamBatchSampler(data.exam_ids, 4, 16, seed=0)
        loader = make_loader(data, sampler, args.workers)
        batch = sum(len(b) for b in sampler) / len(sampler)
        raw_rate = step_rate(size, int(round(batch)))
        torch.manual_seed(0)
        model = build_classifier("resnet18", "cluster", num_clusters=11)
        cfg = TrainConfig(epochs=2, progress=False, ckpt_every=None, deterministic=False)
        t0 = time.perf_counter()
        res = Trainer(model, cfg, PICA({"lam": 2.0}), tmp / "ck").fit(loader)
        full = len(data) * res.epochs / (time.perf_counter() - t0)
        naive = _decode_every_step_rate(raw, size)
        cache = loader_rate(ds, size, ("weak", "weak"), 4, args.workers)
    print(f"{size} px, exam batches of ~{batch:.0f} images x 2 views:")
    print(f"  raw model step (random tensors)        {raw_rate:8.1f} im/s")
    print(f"  full pretrain step (loader + trainer)  {full:8.1f} im/s  = {full / raw_rate:.2f} of the raw step "
          f"({'ok' if full / raw_rate >= 0.95 else 'BELOW'} the 0.95 target; includes 2 epoch-end checkpoints)")
    print(f"  loader from the uint8 cache            {cache:8.1f} im/s")
    print(f"  naive decode-every-step loader         {naive:8.1f} im/s  (cache is {cache / naive:.1f}x faster)")


def decode_rate(raw: Path, size: int) -> tuple[float, int]:
    """(images/s, images) of what predict does before the model, alone: ingest's read + clean of every exam file
    under `raw`."""
    from usclf.data.ingest import read_and_clean_file
    files = [p for p in sorted(raw.glob("*/*")) if p.is_file() and p.suffix.lower() != ".csv"]
    t0, n = time.perf_counter(), 0
    for p in files:
        n += sum(img is not None for _, img, _, _ in read_and_clean_file((str(p), p.name, {"size": size}, False)).frames)
    return n / (time.perf_counter() - t0), n


def bench_predict_cmd(args) -> None:
    """Predict from files vs the model forward alone, at --size (64) and 224 px; interleaved rounds, best of
    each, also per CPU-second of this process (immune to other load, blind to overlap across cores)."""
    from usclf.predict.run import bench_predict
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, best of {args.rounds} "
          "interleaved rounds")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        simulate(tmp / "raw", SimulateConfig(exams=args.exams // 2, size=192, seed=2), progress=False)
        for size in sorted({args.size, 224}):
            best = {"pred": 0.0, "fwd": 0.0, "pred_cpu": 0.0, "fwd_cpu": 0.0}
            bench_predict(tmp / "raw", tmp, batch_size=args.batch, size=size)   # writes the model; warm-up
            for _ in range(args.rounds):
                c0 = time.process_time()
                r = bench_predict(tmp / "raw", tmp, tmp / "bench_model.pt", batch_size=args.batch)
                best["pred_cpu"] = max(best["pred_cpu"], r["images"] / (time.process_time() - c0))
                best["pred"] = max(best["pred"], r["images_per_s"])
                c0 = time.process_time()
                fwd, n = step_rate_infer(size, args.batch, with_count=True)
                best["fwd_cpu"] = max(best["fwd_cpu"], n / (time.process_time() - c0))
                best["fwd"] = max(best["fwd"], fwd)
            print(f"predict from files ({size} px, batch {args.batch}, {r['images']} images): {best['pred']:.1f} "
                  f"im/s; model forward alone {best['fwd']:.1f} im/s -> {best['pred'] / best['fwd']:.2f} of it "
                  f"(per CPU-second: {best['pred_cpu']:.1f} vs {best['fwd_cpu']:.1f} -> "
                  f"{best['pred_cpu'] / best['fwd_cpu']:.2f})")
            dec = max(decode_rate(tmp / "raw", size)[0] for _ in range(args.rounds))
            serial = 1 / (1 / best["fwd"] + 1 / dec)   # when decoding cannot overlap a forward that fills every core
            print(f"  decode + clean alone {dec:.1f} im/s; forward then decode, one after the other: {serial:.1f} im/s "
                  f"= {serial / best['fwd']:.2f} of the forward")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["data", "pipeline", "predict", "ingest", "augment", "archive"],
                   help="which benchmark to run")
    p.add_argument("--frames", type=int, default=20000, help="archive: frames in the simulated export")
    p.add_argument("--tmp", default=None, help="archive: scratch folder (default: the system temp folder)")
    p.add_argument("--size", type=int, default=64, help="image size for pipeline/predict (default 64)")
    p.add_argument("--exams", type=int, default=40, help="simulated exams for the ingest/loader benchmark")
    p.add_argument("--batch", type=int, default=64, help="images per training step (two views each)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the loader benchmark")
    p.add_argument("--rounds", type=int, default=2, help="augment: interleaved rounds per backend (best kept)")
    p.add_argument("--seconds", type=float, default=2.0, help="augment: seconds per measurement")
    p.add_argument("--threads", type=int, default=1, help="augment: torch intra-op threads")
    args = p.parse_args(argv)
    if args.what == "archive":
        from usclf.studies.bench_archive import bench_archive
        bench_archive(args)
        return 0
    if args.what == "augment":
        from usclf.studies.bench_device import bench_augment
        bench_augment(args)
        return 0
    {"data": bench_data, "pipeline": bench_pipeline, "predict": bench_predict_cmd,
     "ingest": bench_ingest_workers}[args.what](args)
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("bench"))
