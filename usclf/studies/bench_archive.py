"""`pipelines/bench.py archive`: every data stage on one simulated archive export, ratios in one run.

    python pipelines/bench.py archive                 # 20,000 frames at 224 px (the issue-26 size)
    python pipelines/bench.py archive --frames 2000   # a tenth of it (what docs/performance.md records)

Steps: simulate an export of ~N frames at 224 px (format "mixed": PNG, JPEG and DICOM multi-frame files,
chosen per exam) -> ingest frames/s with 0 and 2 decode workers -> cache size on disk -> loader images/s at
224 px (weak+weak and weak+strong views, augment.backend cpu and device) -> the model forward alone and
`usclf predict` images/s on N/10 and N frames, each predict in a fresh process so its peak RSS is its own
(memory must stay flat: peak RSS at N <= 1.1 x at N/10). Scratch data goes to --tmp (default the system
temp folder; ~60 KB per frame of raw export plus ~50 KB per frame of cache at 224 px).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.readers import sniff
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.transforms import AugmentConfig

SIZE = 224
FRAMES_PER_EXAM = 12           # simulate's default 8-16 frames per exam, on average
RSS_FLAT = 1.1                 # peak RSS at N over N/10 must stay under this


def disk_bytes(path: Path) -> int:
    """Bytes on disk (allocated blocks) under `path`."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def export(raw: Path, frames: int, seed: int = 3) -> dict:
    """A simulated export of ~`frames` frames at 224 px; {format: files} of what was written."""
    simulate(raw, SimulateConfig(exams=max(1, math.ceil(frames / FRAMES_PER_EXAM)), size=SIZE, seed=seed,
                                 format="mixed"), progress=False)
    kinds: dict[str, int] = {}
    for p in raw.rglob("*"):
        if p.is_file() and p.name != "labels.csv":
            with open(p, "rb") as fh:
                k = sniff(fh.read(132))
            kinds[k] = kinds.get(k, 0) + 1
    return kinds


def subset(raw: Path, dest: Path, fraction: float) -> int:
    """`dest` with symlinks to the first `fraction` of the exam folders of `raw` (predict follows them)."""
    exams = sorted(p for p in raw.iterdir() if p.is_dir())
    keep = exams[:max(1, round(len(exams) * fraction))]
    dest.mkdir(parents=True)
    for e in keep:
        (dest / e.name).symlink_to(e.resolve(), target_is_directory=True)
    return len(keep)


def loader_rate(ds, views: tuple[str, ...], backend: str, seconds: float, workers: int) -> float:
    """Source images/s of the training loader at 224 px over >= `seconds` (after one warm-up batch)."""
    from usclf.studies.bench_device import augment_loader

    loader = augment_loader(ds, SIZE, views, backend, workers=workers)
    n, t0, epoch = 0, None, 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        for b in loader:
            views_ = b["views"] if "views" in b else b["unlabeled"]["views"]
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += views_[0].shape[0]
            if time.perf_counter() - t0 >= seconds and n:
                return n / (time.perf_counter() - t0)
        epoch += 1


_PREDICT_CHILD = """
import json, resource, sys
from usclf.predict.run import predict
r = predict(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=int(sys.argv[4]), device="cpu", progress=False,
            salt="bench", workers=int(sys.argv[5]))
print(json.dumps({"images": r.n_predicted, "rows": r.n_rows, "seconds": r.seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def predict_child(model: Path, inp: Path, out: Path, batch: int, workers: int) -> dict:
    """One `predict` run in a fresh interpreter: images/s and its own peak RSS."""
    res = subprocess.run([sys.executable, "-c", _PREDICT_CHILD, str(model), str(inp), str(out), str(batch),
                          str(workers)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"predict child failed: {res.stderr.strip()[-2000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["images_per_s"] = r["images"] / max(r["seconds"], 1e-9)
    return r


def bench_archive(args) -> dict:
    """Run every step on a fresh export of `args.frames` frames; prints a table, returns the numbers."""
    from usclf.data.manifest import DEFAULT_CLASSES
    from usclf.models.heads import build_classifier
    from usclf.models.modelfile import ModelInfo, Preprocess, save_model_file
    from usclf.studies.bench_device import step_rate_infer

    n, res = args.frames, {"frames_asked": args.frames}
    backends = ["cpu", "device"] if "backend" in AugmentConfig.__dataclass_fields__ else ["cpu"]
    print(f"archive bench: ~{n} frames at {SIZE} px, torch {torch.__version__}, threads {torch.get_num_threads()},"
          f" {os.cpu_count()} cores, device cpu")
    if args.tmp:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)   # a scratch folder named on the command line may be new
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        kinds = export(tmp / "raw", n)
        res["files"] = kinds
        print(f"  export: {sum(kinds.values())} files {kinds} in {time.perf_counter() - t0:.0f} s, "
              f"{disk_bytes(tmp / 'raw') / 1e6:.0f} MB on disk")
        for w in (0, 2):
            t0 = time.perf_counter()
            r = ingest(tmp / "raw", tmp / f"ds_w{w}", tmp / "raw" / "labels.csv",
                       IngestConfig(size=SIZE, workers=w), progress=False)
            s = time.perf_counter() - t0
            res[f"ingest_w{w}_frames_per_s"] = r.n_frames_kept / s
            res["frames_kept"] = r.n_frames_kept
            print(f"  ingest workers={w}: {r.n_frames_kept} frames kept in {s:.1f} s = "
                  f"{r.n_frames_kept / s:.1f} frames/s")
        res["cache_mb"] = disk_bytes(tmp / "ds_w0") / 1e6
        print(f"  cache at {SIZE} px: {res['cache_mb']:.1f} MB on disk "
              f"({res['cache_mb'] * 1e3 / max(res['frames_kept'], 1):.1f} KB/frame)")
        ds = open_dataset(tmp / "ds_w0")
        for views in (("weak", "weak"), ("weak", "strong")):
            for b in backends:
                rate = loader_rate(ds, views, b, args.seconds, args.workers)
                res[f"loader_{'+'.join(views)}_{b}"] = rate
                print(f"  loader {SIZE} px {'+'.join(views):<12} backend={b:<7} workers={args.workers}: "
                      f"{rate:8.1f} images/s")
        del ds
        c = list(DEFAULT_CLASSES)
        model = save_model_file(tmp / "model.pt", build_classifier("resnet18", num_classes=len(c)),
                                ModelInfo(c, preprocess=Preprocess({"size": SIZE}), thresholds=[0.5] * len(c)))
        small = subset(tmp / "raw", tmp / "tenth", 0.1)
        res["forward_per_s"] = fwd = step_rate_infer(SIZE, args.batch)
        print(f"  model forward alone, {SIZE} px, batch {args.batch}: {fwd:.1f} images/s")
        for name, inp in (("tenth", tmp / "tenth"), ("all", tmp / "raw")):
            r = predict_child(model, inp, tmp / f"pred_{name}.csv", args.batch, 0)
            res[f"predict_{name}"] = r
            print(f"  predict {name:<5} ({small if name == 'tenth' else 'all'} exams): {r['images']} images, "
                  f"{r['images_per_s']:.1f} images/s = {r['images_per_s'] / fwd:.2f} of the forward, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")
        ratio = res["predict_all"]["peak_rss_mb"] / res["predict_tenth"]["peak_rss_mb"]
        res["rss_ratio"] = ratio
        print(f"  peak RSS all / tenth: {ratio:.3f} ({'flat' if ratio <= RSS_FLAT else 'NOT flat'}, "
              f"limit {RSS_FLAT})")
    return res
