"""Adapters: class-per-folder trees and .npz arrays -> the usclf dataset folder."""
from __future__ import annotations


import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from usclf.data.adapters import from_class_folders, from_npz
from usclf.data.manifest import validate_manifest
from usclf.errors import UsclfError

BREASTMNIST = shared_data("breastmnist", "breastmnist.npz")


def test_class_folders_single_label(tmp_path):
    root = tmp_path / "busi"
    levels = {"benign": 60, "malignant": 120, "normal": 200}   # each class has its own brightness
    for cls, v in levels.items():
        (root / cls / "more").mkdir(parents=True)
        cv2.imwrite(str(root / cls / "a.png"), np.full((20, 30), v, np.uint8))
        cv2.imwrite(str(root / cls / "more" / "b.jpg"), np.full((30, 20, 3), v, np.uint8))
    (root / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    (root / "empty_class").mkdir()
    (root / "readme.txt").write_text("BUSI")
    ds = from_class_folders(root, tmp_path / "out", size=16, progress=False)
    man = ds.manifest
    assert ds.classes == ["benign", "malignant", "normal"] and "other" not in man.columns
    assert len(man) == 6 and ds.images.shape == (6, 16, 16)
    assert (man[ds.classes].sum(axis=1) == 1).all()                  # exactly one positive per row
    for _, r in man.iterrows():
        cls = r["path"].split("/")[0]
        assert r[cls] == 1
        img = ds.images[r["cache_row"]]
        assert abs(int(img.max()) - levels[cls]) <= 1                 # image and label stay aligned
    assert man["patient_id"].nunique() == 6                           # each file its own patient
    rep = pd.read_csv(tmp_path / "out" / "ingest_report.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(rep["path"], rep["reason"]))
    assert "truncated PNG" in reasons["benign/broken.png"]
    assert reasons["readme.txt"] == "not inside a class folder"
    assert "not a class" in reasons["empty_class/"]


def test_class_folders_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    cv2.imwrite(str(tmp_path / "only" / "a.png"), np.full((8, 8), 9, np.uint8))
    with pytest.raises(UsclfError, match="at least 2 class folders"):
        from_class_folders(tmp_path, tmp_path / "out", size=8, progress=False)


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason=f"{BREASTMNIST} not present")
def test_breastmnist_npz(tmp_path):
    src = np.load(BREASTMNIST)
    ds = from_npz(BREASTMNIST, tmp_path / "bm")
    man = ds.manifest
    assert ds.images.shape == (780, 28, 28) and ds.classes == ["class_0", "class_1"]
    assert man["split"].value_counts().to_dict() == {"train": 546, "test": 156, "val": 78}
    assert validate_manifest(man, ds.classes) == []
    val = man[man["split"] == "val"]
    np.testing.assert_array_equal(ds.images[val["cache_row"].to_numpy()], src["val_images"])
    np.testing.assert_array_equal(val["class_1"].to_numpy(), src["val_labels"].reshape(-1))
    small = from_npz(BREASTMNIST, tmp_path / "s", size=16, classes=["benign", "malignant"])
    assert small.images.shape == (780, 16, 16) and small.classes == ["benign", "malignant"]


def test_usps_style_float_flat_npz(tmp_path):
    x_train = np.zeros((4, 256), np.float32)
    x_train[:, :16] = 1.0                                              # first row of each 16x16 image white
    x_train[1] = 0.5
    y_train = np.array([0, 3, 1, 2])
    x_test, y_test = np.zeros((2, 256), np.float32), np.array([3, 0])
    np.savez(tmp_path / "usps.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = from_npz(tmp_path / "usps.npz", tmp_path / "out")
    assert ds.images.shape == (6, 16, 16) and ds.classes == [f"class_{k}" for k in range(4)]
    assert ds.images[0, 0].min() == 255 and ds.images[0, 1].max() == 0
    assert (ds.images[1] == 128).all()                                 # 0.5 -> 128
    assert list(ds.manifest["split"]) == ["train"] * 4 + ["test"] * 2
    onehot = ds.manifest[ds.classes].to_numpy()
    assert onehot.argmax(1).tolist() == [0, 3, 1, 2, 3, 0] and (onehot.sum(1) == 1).all()


def test_multilabel_rgb_npz(tmp_path):
    rgb = np.zeros((3, 8, 8, 3), np.uint8)
    rgb[..., 1] = 100                                                  # pure green -> grey 59
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    np.savez(tmp_path / "m.npz", train_images=rgb, train_labels=y, test_images=rgb[:1], test_labels=y[:1])
    ds = from_npz(tmp_path / "m.npz", tmp_path / "out", classes=["a", "b", "c"])
    assert ds.images.shape == (4, 8, 8) and int(ds.images[0, 0, 0]) == 59
    assert ds.manifest[["a", "b", "c"]].to_numpy().tolist() == y.tolist() + y[:1].tolist()


@pytest.mark.parametrize("arrays, expected", [
    (dict(images=np.zeros((2, 4, 4))), "no MedMNIST"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([0, 1, 1])), "2 images"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8)), "no matching 'train_labels'"),
    (dict(train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.array([0, -1])), "non-negative"),
    (dict(x_train=np.full((2, 4, 4), 300.0), y_train=np.array([0, 1])), "cannot map image values"),
])
def test_bad_npz_one_line_error(tmp_path, arrays, expected):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UsclfError, match=expected):
        from_npz(tmp_path / "bad.npz", tmp_path / "out")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsclfError, match="not a readable .npz"):
        from_npz(tmp_path / "junk.npz", tmp_path / "out")
