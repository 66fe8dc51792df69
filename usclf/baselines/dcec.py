"""DCEC (Guo et al. 2017; official code XifengGuo/DCEC) and IDCEC (paper 004, Lu et al. 2022; official code
hulu88/IDCEC). Both are IDEC on a convolutional autoencoder whose code has K dimensions: pretraining on
reconstruction, k-means init, then L_r + gamma L_c with the target refreshed every T steps, through the
DEC/IDEC machinery of dec.py. IDCEC adds input noise, the weight penalty, augmentation, and then trains a
CNN on the reliable samples (Eqs. 16-17) that predicts every image (Algorithm 1, lines 15-20)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsclfError
from ..losses.idcec import idcec_loss, reliable_samples, weight_penalty
from ..train.loop import Trainer
from .autoencoders import GuoConvAE, check_strided_size
from .dec import IDEC, IndexBatches
from .features import kmeans
from .registry import Assignment, check_positive
from .steps import PseudoLabelStep


def random_affine(x: torch.Tensor, rotation: float, shift: float, zoom: float) -> torch.Tensor:
    """Per image: a rotation in +-`rotation` degrees, a shift in +-`shift` of each side and a zoom in
    1 +- `zoom`, bilinear, edge pixels repeated outside (Keras ImageDataGenerator's fill_mode 'nearest')."""
    if not (rotation or shift or zoom):
        return x
    n = len(x)

    def u() -> torch.Tensor:
        return torch.rand(n, device=x.device) * 2 - 1

    a, s = u() * math.radians(rotation), 1 + u() * zoom
    tx, ty = u() * 2 * shift, u() * 2 * shift       # normalised coordinates span 2 per side
    cos, sin = torch.cos(a) * s, torch.sin(a) * s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class SmallCNN(nn.Module):
    """IDCEC's classifier: per filter count a 5x5 'same' conv + ReLU + 2x2 max-pool, a dense ReLU layer,
    dropout, a dense K layer (logits). Paper Fig. 4 is not in the text; this is the official idcec.py's
    commented-out model, the one with the dropout 0.5 before the last dense layer that Sec. 4.6 describes
    (its active model is a VGG-16-like net without dropout)."""

    def __init__(self, size: tuple[int, int], k: int, filters: list[int], dense: int, dropout: float):
        super().__init__()
        layers, ch, (h, w) = [], 1, size
        for n in filters:
            layers += [nn.Conv2d(ch, n, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            ch, h, w = n, (h + 1) // 2, (w + 1) // 2     # Keras 'same' pooling: ceil(s / 2)
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * h * w, dense), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dense, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def _softmax_all(model: nn.Module, X: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    was = model.training
    model.eval()
    P = torch.cat([torch.softmax(model(X[i:i + chunk]).float(), 1) for i in range(0, len(X), chunk)])
    model.train(was)
    return P


class DCEC(IDEC):
    """IDEC (L = L_r + gamma L_c) on GuoConvAE; settings in the `dcec` section and its `cluster` subsection."""
    name, conv, pooled = "dcec", True, False

    @property
    def section(self) -> str:
        return self.name

    @property
    def settings(self):
        return getattr(self.cfg, self.section).cluster

    def validate(self) -> None:
        c, sec = getattr(self.cfg, self.section), self.section
        d = c.cluster
        if len(c.filters) != 3 or any(v < 1 for v in c.filters) or (c.code is not None and c.code < 1):
            raise UsclfError(f"baseline: {sec}.filters must be three positive filter counts and {sec}.code "
                             f"positive or null, got {c.filters} and {c.code}")
        check_positive(**{f"{sec}.epochs": c.epochs, f"{sec}.batch_size": c.batch_size, f"{sec}.lr": c.lr,
                          f"{sec}.cluster.lr": d.lr, f"{sec}.cluster.batch_size": d.batch_size,
                          f"{sec}.cluster.max_steps": d.max_steps, f"{sec}.cluster.alpha": d.alpha})
        if d.update_interval is not None and d.update_interval < 1:
            raise UsclfError(f"baseline: {sec}.cluster.update_interval must be >= 1, got {d.update_interval}")
        if not 0 <= d.tol < 1 or d.gamma < 0:
            raise UsclfError(f"baseline: {sec}.cluster.tol must be in [0, 1) and {sec}.cluster.gamma >= 0")
        if c.weights and not Path(c.weights).is_file():
            raise UsclfError(f"baseline: {sec}.weights file not found: {c.weights}")

    def check(self, images: np.ndarray, k: int) -> None:
        check_strided_size(images.shape[1:])

    def _build(self, X: torch.Tensor, k: int) -> tuple[nn.Module, dict]:
        c = getattr(self.cfg, self.section)
        code = c.code or k
        arch = {"kind": self.name, "size": list(X.shape[2:]), "filters": list(c.filters), "code": code}
        return GuoConvAE(tuple(X.shape[2:]), list(c.filters), code, pooled=self.pooled), arch


class IDCEC(DCEC):
    """Module A: DCEC on the pooled autoencoder with Eq. 7's loss on noisy inputs; module B: reliable samples
    of k-means on the embedding -> CNN, `rounds` times (later rounds cluster the previous CNN's softmax
    outputs, as the official idcec.py does over its 30 rounds)."""
    name, pooled = "idcec", True

    def validate(self) -> None:
        super().validate()
        c = self.cfg.idcec
        check_positive(**{"idcec.rounds": c.rounds, "idcec.cnn.epochs": c.cnn.epochs, "idcec.cnn.lr": c.cnn.lr,
                          "idcec.cnn.batch_size": c.cnn.batch_size, "idcec.cnn.dense": c.cnn.dense})
        if not c.cnn.filters or any(v < 1 for v in c.cnn.filters):
            raise UsclfError(f"baseline: idcec.cnn.filters must be positive filter counts, got {c.cnn.filters}")
        if min(c.beta, c.noise, c.rotation) < 0 or not (0 <= c.shift < 1 and 0 <= c.zoom < 1):
            raise UsclfError("baseline: idcec.beta, noise, rotation must be >= 0; idcec.shift, zoom in [0, 1)")
        if not 0 <= c.lam <= 1 or not 0 <= c.cnn.dropout < 1:
            raise UsclfError(f"baseline: idcec.lam must be in [0, 1] and idcec.cnn.dropout in [0, 1), got "
                             f"{c.lam} and {c.cnn.dropout}")

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg.idcec
        return random_affine(x, c.rotation, c.shift, c.zoom)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        # Sec. 3.1 "a small amount of random noise": Gaussian, std idcec.noise; the official code adds none
        return x + self.cfg.idcec.noise * torch.randn_like(x) if self.cfg.idcec.noise else x

    def pretrain_loss(self, net, x):
        """Denoising reconstruction of an augmented batch (official cae.py augments) + beta L_w (Eq. 6)."""
        x = self._augment(x)
        z, xr = net(self._noisy(x))
        rec, l2 = F.mse_loss(xr, x), weight_penalty(net.parameters())
        return rec + self.cfg.idcec.beta * l2, z, {"rec": rec, "l2": l2}

    def cluster_loss(self, net, target, X, idx, nbrs):
        """Eq. 7 on noisy inputs against the clean ones; L_w over the autoencoder, not the centres."""
        x = X[idx]
        _, q, xr = net(self._noisy(x))
        return idcec_loss(x, xr, target[idx], q, getattr(net, "module", net).ae.parameters(), self.settings.gamma,
                          self.cfg.idcec.beta)

    def cluster(self, ae, X, labels, centers, ctx, nbrs) -> Assignment:
        module_a = super().cluster(ae, X, labels, centers, ctx, nbrs)
        c, n = self.cfg.idcec, len(X)
        feats, info, cnn_steps = module_a.features, dict(module_a.info), 0
        for r in range(c.rounds):
            km_labels, centres = kmeans(feats, ctx.k, ctx.seed + r, self.cfg.features.n_init)
            pseudo, _ = reliable_samples(feats, centres, c.lam, km_labels)
            keep = np.flatnonzero(pseudo >= 0)
            cnn, steps = self._train_cnn(X, keep, pseudo[keep], ctx, r)
            cnn_steps += steps
            P = _softmax_all(cnn, X)
            info["reliable"] = len(keep) / n
            if ctx.tracker is not None:
                ctx.tracker.log_metrics({"idcec/reliable": len(keep) / n}, step=r)
            selected, feats = feats, P.cpu().numpy()
        info.update({"cnn_steps": cnn_steps, "rounds": float(c.rounds)})
        return Assignment(feats, selected, info)

    def _train_cnn(self, X: torch.Tensor, keep: np.ndarray, y: np.ndarray, ctx, r: int) -> tuple[nn.Module, int]:
        """A fresh CNN trained with cross-entropy on the reliable samples and their pseudo-labels (Alg. 1, l. 16-19)."""
        cc = self.cfg.idcec.cnn
        torch.manual_seed(ctx.seed + 1000 + r)
        cnn = SmallCNN(tuple(X.shape[2:]), ctx.k, list(cc.filters), cc.dense, cc.dropout)
        Xr = X[torch.as_tensor(keep, device=X.device)]
        yr = torch.as_tensor(y, device=X.device)

        per_epoch = math.ceil(len(keep) / min(cc.batch_size, len(keep)))
        res = Trainer(cnn, self._train_cfg(ctx, cc.lr, cc.epochs, per_epoch),
                      PseudoLabelStep(Xr, yr, self._augment),
                      ctx.out / f"idcec_cnn{r}_checkpoints", ctx.tracker
                      ).fit(IndexBatches(len(keep), cc.batch_size, per_epoch, ctx.seed + 2 + r), resume=ctx.resume)
        return cnn, res.steps
