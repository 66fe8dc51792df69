"""Autoencoder baselines: AE + k-means, DEC, IDEC, IDEC + graph embedding (paper 000; Xie et al. 2016;
Guo et al. 2017) and their convolutional twins CAE + k-means, CDEC, CIDEC (paper 001). Pretraining and the
clustering phase both run in the shared Trainer; DCEC / IDCEC (dcec.py) reuse them through the hooks
`_build`, `pretrain_loss`, `settings` and `cluster_loss`."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UsclfError
from ..losses.dec import dec_kl, dec_target, student_t_q
from ..losses.graph import knn_graph
from ..atomic_io import load_checkpoint, save_checkpoint
from ..train.loop import OptimConfig, TrainConfig, Trainer
from .autoencoders import ConvAE, DenseAE, check_conv_size
from .config import DECConfig
from .features import kmeans, raw_pixels
from .registry import Assignment, Baseline, FitContext, check_positive, one_hot
from .steps import DECStep, ReconstructionStep, graph_term


class DECModel(nn.Module):
    """Encoder (+ decoder for IDEC) + cluster centres; the target P is the training step's state (steps.DECStep)."""

    def __init__(self, ae: nn.Module, centers: np.ndarray, alpha: float):
        super().__init__()
        self.ae, self.alpha = ae, alpha
        self.centers = nn.Parameter(torch.as_tensor(centers, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, xr = self.ae(x)
        return z, student_t_q(z, self.centers, self.alpha), xr


class IndexBatches:
    """`steps` batches of row indices per epoch, walking seeded permutations of range(n) (a new one per
    pass), so the order depends only on (seed, epoch): the Trainer's resume re-draws and skips batches."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int):
        self.n, self.bs, self.steps, self.seed, self.epoch = n, min(batch_size, n), steps, seed, 0
        self.batch_sampler = self  # the Trainer looks for set_epoch here

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        per_pass = math.ceil(self.n / self.bs)
        start = self.epoch * self.steps
        for s in range(start, start + self.steps):
            p, b = divmod(s, per_pass)
            perm = np.random.default_rng([self.seed, p]).permutation(self.n)
            yield torch.as_tensor(perm[b * self.bs:(b + 1) * self.bs])


@torch.no_grad()
def _encode_all(model: nn.Module, X: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings (and DEC soft assignments when the model has centres) of every row, in eval mode."""
    was = model.training
    model.eval()
    zs, qs = [], []
    for i in range(0, len(X), chunk):
        out = model(X[i:i + chunk])
        zs.append(out[0])
        if len(out) == 3:
            qs.append(out[1])
    model.train(was)
    return torch.cat(zs), (torch.cat(qs) if qs else None)


class _AutoencoderBaseline(Baseline):
    uses_graph = False

    conv = False

    @property
    def section(self) -> str:
        return "cae" if self.conv else "ae"

    def validate(self) -> None:
        a, d, g, sec = getattr(self.cfg, self.section), self.cfg.dec, self.cfg.graph, self.section
        layers = a.filters + [a.code] if self.conv else a.dims
        if not layers or any(v < 1 for v in layers):
            raise UsclfError(f"baseline: {sec}.{'filters/code' if self.conv else 'dims'} must be positive "
                             f"layer sizes, got {layers}")
        check_positive(**{f"{sec}.epochs": a.epochs, f"{sec}.batch_size": a.batch_size, f"{sec}.lr": a.lr,
                          "dec.lr": d.lr, "dec.batch_size": d.batch_size, "dec.max_steps": d.max_steps,
                          "dec.alpha": d.alpha, "graph.k": g.k})
        if d.update_interval is not None and d.update_interval < 1:
            raise UsclfError(f"baseline: dec.update_interval must be >= 1, got {d.update_interval}")
        if not 0 <= d.tol < 1 or d.gamma < 0 or g.gamma < 0 or g.gamma_pretrain < 0:
            raise UsclfError("baseline: dec.tol must be in [0, 1); dec.gamma, graph.gamma(_pretrain) >= 0")
        if a.weights and not Path(a.weights).is_file():
            raise UsclfError(f"baseline: {sec}.weights file not found: {a.weights}")

    def _train_cfg(self, ctx: FitContext, lr: float, epochs: int, steps_per_epoch: int) -> TrainConfig:
        # epochs here are a few steps long: checkpoint about every 100 steps, not at every epoch end
        # (one save per 4-step BreastMNIST epoch was a quarter of the pretraining time)
        return TrainConfig(epochs=epochs, optim=OptimConfig(name="adam", lr=lr), seed=ctx.seed,
                           device=str(ctx.device), ckpt_every=None, ckpt_epochs=max(1, 100 // steps_per_epoch),
                           progress=ctx.progress, log_every=50, restore_best=False)

    def check(self, images: np.ndarray, k: int) -> None:
        if self.conv:
            check_conv_size(images.shape[1:], len(self.cfg.cae.filters))

    def _inputs(self, images: np.ndarray, device) -> torch.Tensor:
        """Pixels in [0, 1]: N x HW for the dense AE, N x 1 x H x W for the convolutional one."""
        X = torch.as_tensor(raw_pixels(images), device=device)
        return X.view(len(images), 1, *images.shape[1:]) if self.conv else X

    def _build(self, X: torch.Tensor, k: int) -> tuple[nn.Module, dict]:
        a = getattr(self.cfg, self.section)
        if self.conv:
            arch = {"kind": "conv", "size": list(X.shape[2:]), "filters": list(a.filters), "code": a.code}
            return ConvAE(tuple(X.shape[2:]), list(a.filters), a.code), arch
        arch = {"kind": "dense", "in_dim": X.shape[1], "dims": list(a.dims)}
        return DenseAE(X.shape[1], list(a.dims)), arch

    def pretrain(self, X: torch.Tensor, ctx: FitContext, nbrs) -> nn.Module:
        """The autoencoder (loaded from <section>.weights or ctx.out/autoencoder.pt when present, else trained)."""
        a, gamma = getattr(self.cfg, self.section), self.cfg.graph.gamma_pretrain if self.uses_graph else 0.0
        torch.manual_seed(ctx.seed)
        ae, arch = self._build(X, ctx.k)
        saved = Path(a.weights) if a.weights else ctx.out / "autoencoder.pt"
        if saved.is_file() and (a.weights or ctx.resume):
            ck = load_checkpoint(saved)
            if ck.get("arch") != arch:
                raise UsclfError(f"{saved}: autoencoder {ck.get('arch')} does not fit these images and "
                                 f"settings ({arch})")
            ae.load_state_dict(ck["model"])
            return ae.to(X.device)

        step = ReconstructionStep(X, self.pretrain_loss, gamma, nbrs)
        steps = math.ceil(len(X) / min(a.batch_size, len(X)))
        Trainer(ae, self._train_cfg(ctx, a.lr, a.epochs, steps), step, ctx.out / "ae_checkpoints", ctx.tracker).fit(
            IndexBatches(len(X), a.batch_size, steps, ctx.seed), resume=ctx.resume)
        save_checkpoint(saved, {"model": ae.state_dict(), "arch": arch, "graph_gamma": gamma})
        return ae

    def pretrain_loss(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(loss, embedding, logged parts) of one pretraining batch: the reconstruction MSE."""
        z, xr = net(x)
        rec = nn.functional.mse_loss(xr, x)
        return rec, z, {"rec": rec}

    def fit(self, images: np.ndarray, ctx: FitContext) -> Assignment:
        X = self._inputs(images, ctx.device)
        nbrs = knn_graph(X.cpu().numpy(), self.cfg.graph.k) if self.uses_graph else None
        ae = self.pretrain(X, ctx, nbrs)
        z, _ = _encode_all(ae, X)
        labels, centers = kmeans(z.cpu().numpy(), ctx.k, ctx.seed, self.cfg.features.n_init)
        return self.cluster(ae, X, labels, centers, ctx, nbrs)

    def cluster(self, ae, X, labels, centers, ctx, nbrs) -> Assignment:
        raise NotImplementedError  # pragma: no cover - abstract


class AEKMeans(_AutoencoderBaseline):
    name = "ae-kmeans"

    def cluster(self, ae, X, labels, centers, ctx, nbrs) -> Assignment:
        z, _ = _encode_all(ae, X)
        return Assignment(one_hot(labels, ctx.k), z.cpu().numpy(), {})


class DEC(_AutoencoderBaseline):
    name = "dec"
    reconstruct = False

    @property
    def settings(self) -> DECConfig:
        """The clustering-phase settings (DCEC / IDCEC keep their own in <section>.cluster)."""
        return self.cfg.dec

    def cluster_loss(self, net: nn.Module, target: torch.Tensor, X: torch.Tensor, idx: torch.Tensor, nbrs):
        """(loss, logged parts) of one clustering batch against the target P: gamma L_c (+ L_r for IDEC, + the
        graph term)."""
        d = self.settings
        gamma, g2 = (d.gamma if self.reconstruct else 1.0), (self.cfg.graph.gamma if self.uses_graph else 0.0)
        x = X[idx]
        z, q, xr = net(x)
        kl = dec_kl(target[idx], q)
        loss, parts = gamma * kl, {"kl": kl}
        if self.reconstruct:   # IDEC (Eq. 9): L_r + gamma_1 L_c
            parts["rec"] = nn.functional.mse_loss(xr, x)
            loss = loss + parts["rec"]
        if g2:
            parts["graph"] = graph_term(lambda v: net(v)[0], X, idx, z, nbrs)
            loss = loss + g2 * parts["graph"]
        return loss, parts

    def cluster(self, ae, X, labels, centers, ctx, nbrs) -> Assignment:
        d, n = self.settings, len(X)
        model = DECModel(ae, centers, d.alpha).to(X.device)
        step = DECStep(lambda net, target, idx: self.cluster_loss(net, target, X, idx, nbrs),
                       lambda m: _encode_all(m, X)[1], torch.as_tensor(labels, device=X.device).long(),
                       dec_target(_encode_all(model, X)[1]), d.tol)
        interval = d.update_interval or math.ceil(n / min(d.batch_size, n))
        cfg = self._train_cfg(ctx, d.lr, math.ceil(d.max_steps / interval), interval)
        res = Trainer(model, cfg, step, ctx.out / f"{self.name}_checkpoints", ctx.tracker, on_epoch_end=step.refresh
                      ).fit(IndexBatches(n, d.batch_size, interval, ctx.seed + 1), resume=ctx.resume)
        z, q = _encode_all(model, X)
        return Assignment(q.cpu().numpy(), z.cpu().numpy(),
                          {"steps": res.steps, "converged": float(res.stopped_early)})


class IDEC(DEC):
    name = "idec"
    reconstruct = True


class IDECGraph(IDEC):
    name = "idec-graph"
    uses_graph = True


class CAEKMeans(AEKMeans):
    name, conv = "cae-kmeans", True


class CDEC(DEC):
    name, conv = "cdec", True


class CIDEC(IDEC):
    name, conv = "cidec", True
