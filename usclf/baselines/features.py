"""k-means on fixed features: raw pixels, PCA-20, HOG, LBP (paper 001; paper 000/004 k-means rows)."""
from __future__ import annotations

import numpy as np

from ..errors import UsclfError
from .registry import Assignment, Baseline, FitContext, check_positive, one_hot


def kmeans(F: np.ndarray, k: int, seed: int, n_init: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centres of k-means (k-means++ init, n_init restarts, best inertia)."""
    from sklearn.cluster import KMeans

    if k < 2 or k > len(F):
        raise UsclfError(f"k-means: need 2 <= k <= number of images ({len(F)}), got k = {k}")
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(F)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """N x H x W uint8 -> N x HW float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def hog_features(images: np.ndarray, cell: int, block: int) -> np.ndarray:
    from skimage.feature import hog

    if min(images.shape[1:]) < cell * block:
        raise UsclfError(f"HOG: images of {images.shape[1]}x{images.shape[2]} px are smaller than one block "
                         f"({block}x{block} cells of {cell} px)")
    return np.stack([hog(im, pixels_per_cell=(cell, cell), cells_per_block=(block, block)) for im in images]
                    ).astype(np.float32)


def lbp_features(images: np.ndarray, cell: int, radius: int, points: int) -> np.ndarray:
    """Concatenated per-cell histograms of uniform LBP codes (points + 2 bins per cell)."""
    from skimage.feature import local_binary_pattern

    h, w = images.shape[1:]
    ch, cw = max(1, h // cell), max(1, w // cell)   # images smaller than a cell form one cell
    bins = points + 2
    out = np.empty((len(images), ch * cw * bins), dtype=np.float32)
    for n, im in enumerate(images):
        codes = local_binary_pattern(im, points, radius, method="uniform")
        hists = []
        for i in range(ch):
            for j in range(cw):
                c = codes[i * h // ch:(i + 1) * h // ch, j * w // cw:(j + 1) * w // cw]
                hists.append(np.bincount(c.astype(np.int64).ravel(), minlength=bins)[:bins] / c.size)
        out[n] = np.concatenate(hists)
    return out


class _FixedFeatureKMeans(Baseline):
    kind = ""

    def validate(self) -> None:
        f = self.cfg.features
        check_positive(pca_dims=f.pca_dims, hog_cell=f.hog_cell, hog_block=f.hog_block, lbp_cell=f.lbp_cell,
                       lbp_radius=f.lbp_radius, lbp_points=f.lbp_points, n_init=f.n_init)

    def features(self, images: np.ndarray) -> np.ndarray:
        f = self.cfg.features
        if self.kind == "raw":
            return raw_pixels(images)
        if self.kind == "pca":
            from sklearn.decomposition import PCA
            X = raw_pixels(images)
            dims = min(f.pca_dims, X.shape[0], X.shape[1])
            return PCA(n_components=dims, random_state=self.cfg.seed).fit_transform(X).astype(np.float32)
        if self.kind == "hog":
            return hog_features(images, f.hog_cell, f.hog_block)
        return lbp_features(images, f.lbp_cell, f.lbp_radius, f.lbp_points)

    def fit(self, images: np.ndarray, ctx: FitContext) -> Assignment:
        F = self.features(images)
        labels, _ = kmeans(F, ctx.k, ctx.seed, self.cfg.features.n_init)
        return Assignment(one_hot(labels, ctx.k), F, {"feature_dims": F.shape[1]})


class KMeansRaw(_FixedFeatureKMeans):
    name, kind = "kmeans", "raw"


class KMeansPCA(_FixedFeatureKMeans):
    name, kind = "pca-kmeans", "pca"


class KMeansHOG(_FixedFeatureKMeans):
    name, kind = "hog-kmeans", "hog"


class KMeansLBP(_FixedFeatureKMeans):
    name, kind = "lbp-kmeans", "lbp"
