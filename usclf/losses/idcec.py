"""IDCEC (paper 004, Lu et al. 2022): the composite loss of Eqs. 1/7 and the reliable-sample rule of Eqs. 16-17."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from usclf.errors import UsclfError
from usclf.losses.dec import dec_kl


def weight_penalty(params: Iterable[Tensor]) -> Tensor:
    """L_w of Eq. 6: 1/2 sum over layers of ||w||^2 + ||b||^2 (every given tensor, weights and biases alike)."""
    params = list(params)
    if not params:
        raise UsclfError("IDCEC: weight penalty over no parameters")
    return 0.5 * sum(p.pow(2).sum() for p in params)


def idcec_loss(x: Tensor, x_rec: Tensor, p: Tensor, q: Tensor, params: Iterable[Tensor], alpha: float = 0.1,
               beta: float = 1e-6) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 1 / Eq. 7: L = L_r + alpha L_c + beta L_w, with alpha = 0.1, beta = 1e-6 (Sec. 4.3).

    L_r is the per-pixel mean squared error, not Eq. 2's half sum over samples: alpha = 0.1 is DCEC's weight
    (Sec. 4.6), which the official DCEC / IDCEC code sets against Keras' per-pixel 'mse'. L_c is KL(P||Q)
    (Eq. 4) summed over clusters and averaged over the batch (Keras 'kld'), L_w is Eq. 6."""
    if x.shape != x_rec.shape:
        raise UsclfError(f"IDCEC: input {tuple(x.shape)} and reconstruction {tuple(x_rec.shape)} differ in shape")
    if alpha < 0 or beta < 0:
        raise UsclfError(f"IDCEC: loss weights must be >= 0, got alpha={alpha}, beta={beta}")
    parts = {"rec": torch.nn.functional.mse_loss(x_rec, x), "kl": dec_kl(p, q), "l2": weight_penalty(params)}
    return parts["rec"] + alpha * parts["kl"] + beta * parts["l2"], parts


def reliable_samples(features: np.ndarray, centres: np.ndarray, lam: float = 0.65,
                     labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-labels of the reliable samples (-1 for the others) and the anchor index of each cluster.

    Anchor of cluster j (Eq. 17): the sample nearest the k-means centre u_j; an anchor already taken by a
    lower-numbered cluster is skipped for the next nearest sample, so that every cluster keeps at least its
    own anchor (the purpose the paper gives Eq. 17). A sample is reliable when the cosine between its
    feature and its own cluster's anchor is >= lam (Eq. 16 read as Sec. 4.6 states: both vectors
    normalised, then a dot product); its pseudo-label stays its k-means label (Sec. 3.3). `labels` are the
    k-means labels; None = nearest centre (ties to the lowest cluster index, as argmin)."""
    # the official code instead accepts a sample whose cosine with ANY anchor exceeds lambda (strictly), and
    # still labels it by k-means; we follow the paper's "the class center" of the sample's own cluster
    F = np.asarray(features, dtype=np.float64)
    C = np.asarray(centres, dtype=np.float64)
    if F.ndim != 2 or C.ndim != 2 or F.shape[1] != C.shape[1] or len(C) < 1:
        raise UsclfError(f"IDCEC: features {F.shape} and centres {C.shape} must be N x D and K x D")
    if len(C) > len(F):
        raise UsclfError(f"IDCEC: {len(C)} clusters need at least as many samples, got {len(F)}")
    if not 0.0 <= lam <= 1.0:
        raise UsclfError(f"IDCEC: the reliability threshold lambda must be in [0, 1], got {lam}")
    d2 = ((F[:, None, :] - C[None, :, :]) ** 2).sum(-1)             # N x K squared distances
    lab = d2.argmin(1) if labels is None else np.asarray(labels, dtype=np.int64)
    if lab.shape != (len(F),) or lab.min() < 0 or lab.max() >= len(C):
        raise UsclfError(f"IDCEC: labels must be {len(F)} cluster indices in [0, {len(C)})")
    anchors = np.empty(len(C), dtype=np.int64)
    taken = np.zeros(len(F), dtype=bool)
    for j in range(len(C)):
        order = np.argsort(d2[:, j], kind="stable")                  # ties: the lowest sample index
        anchors[j] = order[~taken[order]][0]
        taken[anchors[j]] = True
    unit = F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
    cos = (unit * unit[anchors[lab]]).sum(1)
    pseudo = np.where(cos >= lam - 1e-12, lab, -1)                   # 1e-12: a sample identical to its anchor
    pseudo[anchors] = np.arange(len(C))
    return pseudo.astype(np.int64), anchors
