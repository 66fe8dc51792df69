"""The digits benchmark's exam folders: every image once, labels and exam ids right, ingestable."""
import numpy as np
import pandas as pd
import pytest

from usclf.data.npz_exams import load_npz_digits, main, write_exam_folders


def _npz(tmp_path, n=23):
    rng = np.random.default_rng(0)
    x = rng.random((n, 16, 16)).astype(np.float32)
    x[:, 0, 0] = np.arange(n) / 255.0  # a per-image fingerprint that survives the float -> uint8 step
    y = np.arange(n) % 3
    f = tmp_path / "d.npz"
    np.savez(f, x_train=x[:15], y_train=y[:15], x_test=x[15:], y_test=y[15:])
    return f, y


def test_every_image_once_with_its_label_and_exam(tmp_path):
    f, y = _npz(tmp_path)
    x, yy = load_npz_digits(f)
    assert x.dtype == np.uint8 and x.shape == (23, 16, 16) and (yy == y).all()
    labels = write_exam_folders(x, yy, tmp_path / "out", per_exam=5, size=16, seed=1)
    df = pd.read_csv(labels)
    assert len(df) == 23 and df["patient_id"].nunique() == 5            # 5 + 5 + 5 + 5 + 3
    assert list(df.columns) == ["path", "digit_0", "digit_1", "digit_2", "patient_id"]
    assert (df[["digit_0", "digit_1", "digit_2"]].sum(axis=1) == 1).all()
    import cv2
    for _, r in df.iterrows():  # each file is the image its row's label belongs to
        img = cv2.imread(str(tmp_path / "out" / "export" / r["path"]), cv2.IMREAD_GRAYSCALE)
        k = int(img[0, 0])
        assert r[f"digit_{y[k]}"] == 1 and r["patient_id"] == r["path"].split("/")[0]
    assert sorted(int(cv2.imread(str(tmp_path / "out" / "export" / p), 0)[0, 0]) for p in df["path"]) == list(range(23))


def test_cli_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.npz"), str(tmp_path / "o")]) == 2
    assert "npz file not found" in capsys.readouterr().err
    f, _ = _npz(tmp_path)
    assert main([str(f), str(tmp_path / "o"), "--per-exam", "0"]) == 2
    assert main([str(f), str(tmp_path / "o"), "--per-exam", "4", "--size", "16"]) == 0
    assert len(pd.read_csv(tmp_path / "o" / "labels.csv")) == 23
