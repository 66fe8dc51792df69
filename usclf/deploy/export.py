"""`usclf export`: a model file -> ONNX, TorchScript or an MLflow pyfunc model, checked against PyTorch.

ONNX and TorchScript hold one graph, `ScoringGraph`: pixels (N x 1 x S x S float32, values 0-255: a frame after
ingest's cleaning and the eval resize, `prepare_pixels`) -> (scores N x C in [0, 1], labels N x C uint8 with
the per-class validation thresholds applied). Normalisation, the head (sigmoid, two-head's multi-label head or
the cluster -> class matching of Algorithm 1) and the thresholds are inside, so a runtime needs no usclf. The
class names, thresholds and preprocessing travel as metadata (ONNX metadata_props / TorchScript extra file
`usclf.json`). The MLflow model is a models-from-code pyfunc (`usclf/deploy/pyfunc_code.py`; no pickled Python
objects) whose artefact is the model file itself, read with `torch.load(weights_only=True)`; it takes raw
frames and applies ingest's cleaning too.

Every export is checked: the exported model's scores against `usclf predict`'s on the same frames (cache images
of `--data`, else seeded random frames); more than `tol` apart and nothing is left behind. Where an export may
be written, and what `--overwrite` may replace (only usclf's own exports), is in `outputs.py`.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.transforms import eval_resize
from ..errors import UsclfError
from ..locks import output_lock
from ..predict.run import Predictor
from .outputs import check_out, check_replace, commit, staging, write_marker

FORMATS = ("onnx", "torchscript", "mlflow")
OPSET = 17  # ONNX opset 17 (onnxruntime >= 1.14 runs it; every op used here exists since opset 13)
TOL = 1e-4


class ScoringGraph(nn.Module):
    """Pixels 0-255 -> (scores, labels): normalisation, network, scoring, thresholds in one traceable module."""

    def __init__(self, pred: Predictor):
        super().__init__()
        self.net = pred.model.cpu().eval().requires_grad_(False)  # an inference graph: outputs need no grad
        self.scale, self.offset = float(pred.transform.scale), float(pred.transform.offset)
        self.matched, self.soft = pred.kind.matched, bool(pred.soft)
        v = pred.matching if pred.matching is not None else np.zeros((1, len(pred.classes)))
        self.register_buffer("matching", torch.as_tensor(v, dtype=torch.float32))
        self.register_buffer("thresholds", torch.as_tensor(pred.thresholds, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(pixels * self.scale + self.offset)
        if isinstance(out, tuple):  # two-head model: the multi-label head, as in predict
            out = out[1]
        if self.matched:
            scores = out @ self.matching if self.soft else self.matching[out.argmax(dim=1)]
        else:
            scores = torch.sigmoid(out.float())
        return scores, (scores >= self.thresholds).to(torch.uint8)


def prepare_pixels(images: list[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """Cleaned uint8 frames (ingest size) -> the exported graph's input, N x 1 x size x size float32 0-255."""
    return np.stack([eval_resize(np.asarray(im, dtype=np.uint8), size) for im in images]).astype(np.float32)[:, None]


def export_metadata(pred: Predictor, model_path: Path, fmt: str) -> dict:
    """What a runtime needs beside the graph: classes, thresholds, preprocessing, the source model's identity."""
    with open(model_path, "rb") as fh:
        sha1 = hashlib.file_digest(fh, "sha1").hexdigest()
    return {"format": "usclf-export", "version": 1, "export_format": fmt, "classes": pred.classes,
            "thresholds": [float(t) for t in pred.thresholds], "input_size": int(pred.transform.size),
            "ingest": pred.prep, "method": pred.info.method, "stage": pred.info.stage, "model_sha1": sha1,
            "opset": OPSET if fmt == "onnx" else None,
            "inputs": "pixels: N x 1 x S x S float32, 0-255 (ingest cleaning, then the eval resize to S)",
            "outputs": "scores: N x C float32 in [0, 1]; labels: N x C uint8 (score >= threshold)"}


@dataclass
class ExportResult:
    out: Path
    fmt: str
    max_abs_diff: float       # exported vs PyTorch (predict's) scores
    n_checked: int
    label_agreement: float    # fraction of (image, class) labels equal to predict's
    meta: dict                # export_metadata: classes, thresholds, preprocessing, source model sha1


def check_images(pred: Predictor, data: str | Path | None, n: int = 64) -> np.ndarray:
    """Frames for the parity check: the first `n` cache images of an ingested dataset, else seeded noise."""
    size = int(pred.prep["size"])
    if data:
        from ..data.cache import open_dataset
        ds = open_dataset(data)
        if ds.images.shape[1:] != (size, size):
            raise UsclfError(f"{data}: cache images are {ds.images.shape[1]} px, the model reads {size} px")
        return np.asarray(ds.images[:n])
    return np.random.default_rng(0).integers(0, 256, (8, size, size), dtype=np.uint8)


def _write_onnx(graph: ScoringGraph, example: torch.Tensor, out: Path, meta: dict) -> None:
    import onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))  # the TorchScript-based exporter
        torch.onnx.export(graph, (example,), str(out), dynamo=False, opset_version=OPSET, input_names=["pixels"],
                          output_names=["scores", "labels"],
                          dynamic_axes={"pixels": {0: "batch"}, "scores": {0: "batch"}, "labels": {0: "batch"}})
    m = onnx.load(str(out))
    onnx.helper.set_model_props(m, {"usclf": json.dumps(meta)})
    onnx.save(m, str(out))


def _run_onnx(out: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    s, lab = sess.run(None, {"pixels": pixels})
    return s, lab


def _write_torchscript(graph: ScoringGraph, example: torch.Tensor, out: Path, meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))  # jit.trace is deprecated, still works
        ts = torch.jit.trace(graph, example)
        torch.jit.save(ts, str(out), _extra_files={"usclf.json": json.dumps(meta)})


def _run_torchscript(out: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        ts = torch.jit.load(str(out))
    with torch.inference_mode():
        s, lab = ts(torch.from_numpy(pixels))
    return s.numpy(), lab.numpy()


def export_model(model_path: str | Path, fmt: str, out: str | Path, data: str | Path | None = None,
                 tol: float = TOL, overwrite: bool = False,
                 before_commit: Callable[[dict], None] | None = None) -> ExportResult:
    """Export a model file to `fmt` at `out` and check it against PyTorch (see module docstring). The export is
    built beside `out` under the output lock and renamed into place; `before_commit(meta)` (registration) runs
    after the check and before the rename: if it fails, nothing is written."""
    if fmt not in FORMATS:
        raise UsclfError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    out_arg, model_path = out, Path(model_path)
    out = check_out(out_arg, fmt, model_path, data)
    check_replace(out, out_arg, fmt, overwrite)              # before loading anything: fail fast
    with output_lock(out, "export", shown=out_arg):
        check_replace(out, out_arg, fmt, overwrite)          # again, now that no other export can write it
        pred = Predictor(model_path, device="cpu")
        images = check_images(pred, data)
        ref_scores, ref_labels = pred(list(images))
        meta = export_metadata(pred, model_path, fmt)
        pixels = prepare_pixels(images, int(pred.transform.size))
        with staging(out) as tmp:
            try:
                scores, labels = _build(pred, fmt, model_path, tmp, meta, images, pixels)
            except OSError as e:
                raise UsclfError(f"cannot write {out_arg}: {e.strerror or e}") from None
            diff = float(np.abs(np.asarray(scores, np.float64) - ref_scores).max())
            if not diff <= tol:
                raise UsclfError(f"exported {fmt} model disagrees with PyTorch: max |score difference| {diff:.2e} "
                                 f"> {tol:.0e} on {len(images)} images; nothing written")
            if before_commit is not None:
                before_commit(meta)
            commit(tmp, out)
    return ExportResult(Path(out_arg), fmt, diff, len(images), float((np.asarray(labels) == ref_labels).mean()),
                        meta)


def _build(pred: Predictor, fmt: str, model_path: Path, tmp: Path, meta: dict, images: np.ndarray,
           pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write the export at `tmp`; the scores and labels it gives on the check frames."""
    if fmt == "mlflow":
        from .pyfunc import load_pyfunc, save_pyfunc
        save_pyfunc(model_path, tmp, meta)
        write_marker(tmp, meta)
        df = load_pyfunc(tmp).predict(images, params={"prepared": True})
        return df[[f"p_{c}" for c in pred.classes]].to_numpy(), df[pred.classes].to_numpy()
    graph = ScoringGraph(pred)
    write, run = (_write_onnx, _run_onnx) if fmt == "onnx" else (_write_torchscript, _run_torchscript)
    write(graph, torch.from_numpy(pixels[:2]), tmp, meta)
    return run(tmp, pixels)
