"""The typed model file: written once, read once; version 1 files convert; newer ones are one clear line."""
from __future__ import annotations

import pytest
import torch

from usclf.atomic_io import cpu_state_dict, save_checkpoint
from usclf.errors import UsclfError
from usclf.models.heads import build_classifier, model_spec
from usclf.models.modelfile import ModelInfo, Preprocess, load_model_file, save_model_file, update_model_info

CLASSES = ["liver", "kidney", "other"]


def _model():
    torch.manual_seed(0)
    return build_classifier("resnet18", "cluster", num_clusters=4)


def test_round_trip_keeps_every_field_and_the_weights(tmp_path):
    m = _model()
    info = ModelInfo(CLASSES, "pretrain", "lsd", Preprocess({"size": 36, "crop": "auto"}, 32, 0.4, 0.2),
                     vocab=[[1, 0, 0], [0, 1, 0]], data_hash="abc", provenance={"steps": 7})
    save_model_file(tmp_path / "m.pt", m, info)
    got_m, got = load_model_file(tmp_path / "m.pt")
    assert got == info and isinstance(got.preprocess, Preprocess)
    assert got.preprocess.augment_kwargs(99) == {"size": 32, "mean": 0.4, "std": 0.2}
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), got_m.state_dict().values()))
    update_model_info(tmp_path / "m.pt", tmp_path / "e.pt", thresholds=[0.1, 0.2, 0.3], matching=[[1, 0, 0]] * 4)
    _, ev = load_model_file(tmp_path / "e.pt")
    assert ev.thresholds == [0.1, 0.2, 0.3] and ev.vocab == info.vocab and ev.provenance == {"steps": 7}
    assert load_model_file(tmp_path / "m.pt")[1].thresholds == []  # the source file is untouched


def test_version_1_flat_meta_is_converted(tmp_path):
    m = _model()
    meta = {"stage": "finetune", "method": "supervised", "classes": CLASSES, "thresholds": [0.5] * 3,
            "preprocess": {"ingest": {"size": 64}, "input_size": 64, "mean": 0.45, "std": 0.22},
            "best_val_f1": 0.7, "seed": 3}
    save_checkpoint(tmp_path / "v1.pt", {"format": "usclf-model", "version": 1, "spec": model_spec(m),
                                         "state_dict": cpu_state_dict(m), "meta": meta})
    _, info = load_model_file(tmp_path / "v1.pt")
    assert (info.stage, info.method, info.classes, info.thresholds) == ("finetune", "supervised", CLASSES, [0.5] * 3)
    assert info.preprocess == Preprocess({"size": 64}, 64, 0.45, 0.22)
    assert info.provenance == {"best_val_f1": 0.7, "seed": 3}


def test_newer_version_and_foreign_files_are_one_line(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "v9.pt", {"format": "usclf-model", "version": 9, "spec": model_spec(m),
                                         "state_dict": cpu_state_dict(m), "info": {}})
    with pytest.raises(UsclfError, match="version 9; this usclf reads versions 1-2"):
        load_model_file(tmp_path / "v9.pt")
    save_checkpoint(tmp_path / "x.pt", {"weights": torch.zeros(2)})
    with pytest.raises(UsclfError, match="not a usclf model file"):
        load_model_file(tmp_path / "x.pt")
