"""The burned-in-marks counterfactual: the detector takes thin bright strokes (calipers, text) and leaves broad
bright tissue alone, the control moves the same pattern elsewhere, and the study runs end to end on real files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import calibrated, simulated_dataset
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.transforms import AugmentConfig
from usclf.eval.inference import infer
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.stages.common import preprocess_meta
from usclf.stages.scoring import class_scores
from usclf.studies.marks_check import fill, mark_mask, shifted


def _scene() -> np.ndarray:
    img = np.tile(np.linspace(40, 90, 64, dtype=np.float32), (64, 1)).astype(np.uint8)  # smooth background
    img[20:32, 40:52] = 200                       # a broad bright blob (tissue), 12 x 12
    img[10, 6:15] = img[6:15, 10] = 250           # a caliper cross, one pixel thin
    return img


def test_the_detector_takes_thin_marks_not_broad_bright_tissue_and_the_fill_removes_them():
    img = _scene()
    m = mark_mask(img)
    assert m[10, 6:15].all() and m[6:15, 10].all()           # the whole cross
    assert not m[22:30, 42:50].any()                         # the blob's inside is not a mark
    out = fill(img, m)
    assert out[10, 10] < 120 and abs(int(out[40, 40]) - int(img[40, 40])) == 0  # cross gone, the rest untouched
    s = shifted(m, np.random.default_rng(0))
    assert s.sum() == m.sum() and not np.array_equal(s, m)   # same pattern, other place


def test_marks_check_end_to_end_and_a_wrong_source_is_refused(tmp_path, capsys):
    ds_dir = simulated_dataset(tmp_path, 8, seed=3, raw_size=64, size=32)
    ds = open_dataset(ds_dir)
    torch.manual_seed(0)
    m = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(ds.classes)), ds.images)
    aug = AugmentConfig(size=32)
    th = np.median(class_scores("multilabel", infer(m, ds, np.arange(len(ds.manifest)), aug)["out"]), axis=0)
    save_model_file(tmp_path / "m.pt", m, ModelInfo(ds.classes, "finetune", "supervised", thresholds=th.tolist(),
                                                    preprocess=preprocess_meta(ds, aug)))
    args = ["study", "marks-check", "--dataset", str(ds_dir), "--model", str(tmp_path / "m.pt"), "--out",
            str(tmp_path / "out")]
    assert main([*args, "--source", str(tmp_path / "raw")]) == 0
    df = pd.read_csv(tmp_path / "out" / "marks.csv")
    r = df.iloc[0]
    assert len(df) == 1 and r.n_test > 0 and r.mark_share > 0     # the simulator burns in text: marks found
    assert r.dscore_marks_removed > 0 and r.dscore_control > 0     # both edits reach the network input
    assert all(0 <= r[f"f1_{v}"] <= 1 for v in ("original", "marks_removed", "control"))
    assert f"| {tmp_path.name} | 1 | " in (tmp_path / "out" / "marks.md").read_text()  # one model, its folder as strategy
    other = tmp_path / "other"
    simulated_dataset(other, 8, seed=4, raw_size=64, size=32)      # same file names, other pixels
    capsys.readouterr()
    assert main([*args, "--source", str(other / "raw")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no longer gives its cached image" in err and "\n" not in err
