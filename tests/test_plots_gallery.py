"""Evaluation pictures: embeddings, study figures, per-class bars and the HTML cluster gallery."""

from __future__ import annotations

import math
import re
import time

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from usclf.errors import UsclfError
from usclf.eval import gallery, plots
from usclf.eval.report import classification_report

TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # tab10 colours of the first two methods


def read_png(path, min_w=300, min_h=200) -> np.ndarray:
    """Assert `path` is a real, non-blank PNG of plausible size; return it as RGB."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 3_000_000
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    h, w = img.shape[:2]
    assert min_w <= w <= 3000 and min_h <= h <= 3000, (w, h)
    assert img.std() > 5  # not a blank canvas
    return img[..., ::-1]


def has_colour(img: np.ndarray, rgb, tol: int = 12, min_pixels: int = 30) -> bool:
    close = np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol
    return int(close.sum()) >= min_pixels


# ------------------------------------------------------------------------------------------ embedding
def test_embed_2d_subsamples_seeded_and_keeps_blobs_apart():
    rng = np.random.default_rng(1)
    centres = np.eye(3, 8) * 12
    truth = np.repeat(np.arange(3), 100)
    x = centres[truth] + rng.normal(size=(300, 8))
    idx, xy = plots.embed_2d(x, method="tsne", seed=3, max_points=150)
    assert xy.shape == (150, 2) and len(np.unique(idx)) == 150 and np.all(np.diff(idx) > 0)
    idx2, xy2 = plots.embed_2d(x, method="tsne", seed=3, max_points=150)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(xy, xy2)
    assert not np.array_equal(plots.embed_2d(x, method="pca", seed=4, max_points=150)[0], idx)
    # Each point's 2-D nearest neighbour comes from the same blob: the map preserves the structure.
    lab = truth[idx]
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (lab[d.argmin(1)] == lab).mean() > 0.95
    # No subsampling when N <= max_points.
    idx3, xy3 = plots.embed_2d(x, method="pca", max_points=1000)
    np.testing.assert_array_equal(idx3, np.arange(300))


def test_plot_embedding_5000_points_is_fast(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    labels = rng.integers(0, 15, n)
    feats = rng.normal(size=(n, 8)) + labels[:, None] * 0.5
    names = [f"liver+set{i}" for i in labels]  # 15 label sets: legend shows top 12 + rest
    t0 = time.perf_counter()
    out = plots.plot_embedding(feats, labels % 7, names, tmp_path / "sub" / "tsne.png", max_points=400)
    assert time.perf_counter() - t0 < 10
    img = read_png(out, min_w=900)
    assert img.shape[1] > 1.5 * img.shape[0]  # two panels side by side


def test_plot_embedding_rejects_mismatched_rows(tmp_path):
    with pytest.raises(UsclfError, match="same rows"):
        plots.plot_embedding(np.zeros((10, 4)), np.zeros(9), ["a"] * 10, tmp_path / "e.png")
    with pytest.raises(UsclfError, match="unknown embedding method"):
        plots.plot_embedding(np.ones((10, 4)), np.zeros(10), ["a"] * 10, tmp_path / "e.png", method="umap")
    with pytest.raises(UsclfError, match="NaN"):
        plots.embed_2d(np.full((10, 4), np.nan))


# ------------------------------------------------------------------------------------- study figures
def fraction_table() -> pd.DataFrame:
    rows = [("A", 0.1, s, v) for s, v in enumerate([0.7, 0.8, 0.9])]
    rows += [("A", 0.5, 0, 0.85)]
    rows += [("B", f, s, 0.5 + f / 2 + 0.01 * s) for f in (0.1, 0.5) for s in range(4)]
    return pd.DataFrame(rows, columns=["method", "label_fraction", "seed", "f1"])


def test_label_fraction_summary_ci_matches_t_distribution():
    summ = plots.label_fraction_summary(fraction_table()).set_index(["method", "label_fraction"])
    a = summ.loc[("A", 0.1)]
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)  # sd of (0.7, 0.8, 0.9) is 0.1
    assert half == pytest.approx(0.248414, abs=1e-6)
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.8)
    assert a["ci_low"] == pytest.approx(0.8 - half) and a["ci_high"] == pytest.approx(0.8 + half)
    single = summ.loc[("A", 0.5)]
    assert single["n"] == 1 and math.isnan(single["ci_low"])
    b = summ.loc[("B", 0.5)]
    vals = 0.75 + 0.01 * np.arange(4)
    assert b["ci_high"] - b["mean"] == pytest.approx(stats.t.ppf(0.975, 3) * vals.std(ddof=1) / 2)


def test_label_fraction_curves_png(tmp_path):
    img = read_png(plots.plot_label_fraction_curves(fraction_table(), tmp_path / "frac.png"))
    assert has_colour(img, TAB_BLUE) and has_colour(img, TAB_ORANGE)  # both methods drawn


def test_label_fraction_bad_tables(tmp_path):
    df = fraction_table()
    with pytest.raises(UsclfError, match="duplicate row"):
        plots.plot_label_fraction_curves(pd.concat([df, df.iloc[:1]]), tmp_path / "f.png")
    with pytest.raises(UsclfError, match="missing column"):
        plots.plot_label_fraction_curves(df.drop(columns="seed"), tmp_path / "f.png")
    bad = df.assign(f1=df["f1"].astype(object))
    bad.loc[0, "f1"] = "n/a"
    with pytest.raises(UsclfError, match="non-numeric"):
        plots.plot_label_fraction_curves(bad, tmp_path / "f.png")
    with pytest.raises(UsclfError, match=".png"):
        plots.plot_label_fraction_curves(df, tmp_path / "f.pdf")


def test_lambda_boxplot_png(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(m, lam, s, 0.6 + rng.normal(0, 0.03)) for m in ("LSD", "PICA") for lam in (0.5, 1, 2, 5, 10)
            for s in range(4)]
    df = pd.DataFrame(rows, columns=["method", "lam", "seed", "f1"])
    img = read_png(plots.plot_lambda_boxplot(df, tmp_path / "lam.png"))
    assert has_colour(img, TAB_BLUE) and has_colour(img, TAB_ORANGE)
    with pytest.raises(UsclfError, match="missing column"):
        plots.plot_lambda_boxplot(df.rename(columns={"lam": "lambda"}), tmp_path / "lam.png")


# ----------------------------------------------------------------------------- training and report
def test_training_curves_png_and_errors(tmp_path):
    hist = {"train_loss": [1.0, 0.7, 0.5, float("nan"), 0.4], "val_loss": [1.1, 0.8, 0.7, 0.65, 0.6],
            "val_f1": [0.3, 0.5, 0.6, 0.62, 0.64], "mask_rate": []}
    read_png(plots.plot_training_curves(hist, tmp_path / "curves.png"))
    assert plots._panel_name("train_loss") == plots._panel_name("val_loss") == "loss"
    with pytest.raises(UsclfError, match="empty"):
        plots.plot_training_curves({"loss": []}, tmp_path / "c.png")
    with pytest.raises(UsclfError, match="not a list of numbers"):
        plots.plot_training_curves({"loss": ["a", "b"]}, tmp_path / "c.png")


def test_per_class_f1_from_real_report(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["liver", "kidney", "spleen", "other"]
    y = rng.integers(0, 2, (60, 4))
    p = np.where(rng.random((60, 4)) < 0.8, y, 1 - y)
    rep = classification_report(y, p, classes)
    img = read_png(plots.plot_per_class_f1(rep, tmp_path / "f1.png"))
    assert has_colour(img, TAB_BLUE) and has_colour(img, TAB_ORANGE)  # class bars and the average bar
    with pytest.raises(UsclfError, match="no 'f1' column"):
        plots.plot_per_class_f1(rep.drop(columns="f1"), tmp_path / "f1.png")


# ------------------------------------------------------------------------------------------ gallery
def gallery_data(tmp_path):
    """40 constant images, image i has grey value 5 * i + 10, so a thumbnail names its source image."""
    n = 40
    mm = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 32, 32))
    mm[:] = (5 * np.arange(n) + 10).astype(np.uint8)[:, None, None]
    mm.flush()
    images = np.load(tmp_path / "images.npy", mmap_mode="r")
    clusters = np.array([0] * 5 + [2] * 20 + [3] * 15)  # cluster 1 is empty; sizes 5, 20, 15
    confidence = np.random.default_rng(0).random(n)
    matched = np.array([[0.82, 0.41, 0.0], [0.3, 0.3, 0.3], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9]])
    return images, clusters, confidence, matched


def test_cluster_gallery_html_and_thumbnails(tmp_path):
    images, clusters, confidence, matched = gallery_data(tmp_path)
    classes = ["liver", "kid<ney>", "other & co"]
    out = gallery.cluster_gallery(images, clusters, confidence, matched, classes, tmp_path / "gal",
                                  per_cluster=6, title="run <7> & \"x\"")
    doc = out.read_text()
    assert out == tmp_path / "gal" / "gallery.html"
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', doc)
    assert srcs == ["gallery/cluster_02.png", "gallery/cluster_03.png", "gallery/cluster_00.png"]  # by size
    for s in srcs:
        assert (out.parent / s).is_file()
    assert not (out.parent / "gallery" / "cluster_01.png").exists()
    assert re.search(r"Empty clusters \(1\)</h2><p>1</p>", doc)
    assert "liver 0.82, kid&lt;ney&gt; 0.41" in doc
    assert "run &lt;7&gt; &amp; &quot;x&quot;" in doc and "<7>" not in doc and "kid<ney>" not in doc
    assert "other &amp; co" in doc
    # Each sprite holds exactly the cluster's most confident images (grey value identifies the image).
    for k, n_show in [(0, 5), (2, 6), (3, 6)]:
        sprite = cv2.imread(str(out.parent / f"gallery/cluster_{k:02d}.png"), cv2.IMREAD_UNCHANGED)
        assert sprite.ndim == 2
        members = np.flatnonzero(clusters == k)
        top = members[np.argsort(-confidence[members])[:n_show]]
        shown = set(np.unique(sprite).tolist()) - {gallery.PAD_VALUE, 0}
        assert shown == set((5 * top + 10).tolist())
        first_tile = sprite[2:114, 2:114]
        assert (first_tile == 5 * top[0] + 10).all()  # most confident first


def test_cluster_gallery_rejects_bad_input(tmp_path):
    images, clusters, confidence, matched = gallery_data(tmp_path)
    classes = ["a", "b", "c"]
    with pytest.raises(UsclfError, match="cluster ids must lie"):
        gallery.cluster_gallery(images, np.where(clusters == 3, 4, clusters), confidence, matched, classes,
                                tmp_path / "g")
    with pytest.raises(UsclfError, match="one column per class"):
        gallery.cluster_gallery(images, clusters, confidence, matched, ["a", "b"], tmp_path / "g")
    with pytest.raises(UsclfError, match="40 images but 39"):
        gallery.cluster_gallery(images, clusters[:-1], confidence, matched, classes, tmp_path / "g")
    with pytest.raises(UsclfError, match="uint8"):
        gallery.cluster_gallery(images.astype(np.float32), clusters, confidence, matched, classes,
                                tmp_path / "g")
