"""The MLflow pyfunc flavour of a usclf model: raw frames in, per-class probabilities and labels out.

Saved "from code" (`pyfunc_code.py` is the model's definition; MLflow pickles no Python object) with the model
file as its only artefact, loaded by `load_model_file` (`torch.load(weights_only=True)`). So

    mlflow.pyfunc.load_model(path).predict(frames)            # N x H x W uint8, as decoded from the files

returns one row per frame: `p_<class>` (score), `<class>` (0/1 at the validation threshold), `status`
("predicted" / "skipped") and `reason` (why a frame was skipped: blank, Doppler, ...), the same scores as
`usclf predict` on those frames. `params={"prepared": True}` skips ingest's cleaning for frames that are already
cache images (square, at the model's ingest size).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

try:  # the class must subclass PythonModel; mlflow is a dependency, the guard only keeps imports cheap to read
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object

CODE = Path(__file__).with_name("pyfunc_code.py")
ARTIFACT = "usclf_model"


class UsclfPyfunc(PythonModel):
    """The pyfunc model: `Predictor` + ingest's `prepare_frame` (see module docstring)."""

    def load_context(self, context) -> None:
        from ..predict.run import Predictor
        self.pred = Predictor(context.artifacts[ARTIFACT], device="cpu")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from ..data.preprocess import prepare_frame
        pred = self.pred
        prepared = bool((params or {}).get("prepared", False))
        frames = [np.asarray(f) for f in model_input]  # an N x H x W array or a list of frames
        images, reasons = [], []
        for f in frames:
            if prepared:
                img, why = f.astype(np.uint8), ""
            else:
                img, why = prepare_frame(f, **pred.prep)
            images.append(img)
            reasons.append(why)
        ok = [i for i, im in enumerate(images) if im is not None]
        c = len(pred.classes)
        scores, labels = np.full((len(frames), c), np.nan), np.zeros((len(frames), c), dtype=np.int64)
        if ok:
            s, lab = pred([images[i] for i in ok])
            scores[ok], labels[ok] = s, lab
        df = pd.DataFrame(scores, columns=[f"p_{k}" for k in pred.classes])
        for j, k in enumerate(pred.classes):
            df[k] = labels[:, j]
        df["status"] = ["predicted" if im is not None else "skipped" for im in images]
        df["reason"] = reasons
        return df


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
                          params=ParamSchema([ParamSpec("prepared", "boolean", False)]))


def pyfunc_kwargs(model_path: str | Path, meta: dict) -> dict:
    """Arguments shared by mlflow.pyfunc.save_model and log_model for a usclf model file."""
    from importlib.metadata import version
    reqs = [f"{p}=={version(p)}" for p in ("torch", "numpy", "pandas", "opencv-python-headless", "mlflow")]
    return {"python_model": str(CODE), "artifacts": {ARTIFACT: str(Path(model_path).resolve())},
            "signature": _signature(), "pip_requirements": ["usclf", *reqs],
            "metadata": {"usclf": json.dumps(meta)}}


def save_pyfunc(model_path: str | Path, out: str | Path, meta: dict) -> Path:
    """Write the MLflow model folder `out` for a usclf model file."""
    import mlflow.pyfunc
    mlflow.pyfunc.save_model(path=str(out), **pyfunc_kwargs(model_path, meta))
    return Path(out)


def load_pyfunc(path: str | Path):
    import mlflow.pyfunc
    return mlflow.pyfunc.load_model(str(path))
