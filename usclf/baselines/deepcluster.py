"""DeepCluster as adapted by DeepMCAT (paper 002; Caron et al. 2018): every epoch, k-means on the
L2-normalised CNN features gives pseudo-labels; images are drawn uniformly over the pseudo-classes; a new
linear classifier head is trained with the network on them. No PCA, no Sobel (DeepMCAT's choices)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.dataset import UltrasoundDataset
from ..data.sampler import make_loader
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..eval.clustering import nmi
from ..eval.inference import infer
from ..models.heads import build_classifier
from ..train.loop import OptimConfig, TrainConfig, Trainer
from .features import kmeans
from .registry import Assignment, Baseline, FitContext, check_positive, one_hot
from .steps import DeepClusterStep


class UniformPseudoLabelBatches:
    """Batches of (position, aug_seed) for one epoch: N draws spread evenly over the non-empty
    pseudo-classes (with replacement where a class is small), shuffled; seeded by (seed, epoch) and the
    pseudo-labels, so a resumed epoch draws the same batches."""

    def __init__(self, pseudo: torch.Tensor, batch_size: int, seed: int):
        self.pseudo, self.bs, self.seed, self.epoch = pseudo, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.pseudo) / self.bs)

    def __iter__(self):
        labels = self.pseudo.cpu().numpy()
        n = len(labels)
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        per = n // len(groups) + 1      # DeepCluster's UnifLabelSampler: N / non-empty classes + 1 each
        draws = np.concatenate([rng.choice(g, per, replace=len(g) < per) for g in groups])
        draws = rng.permutation(draws)[:n]
        seeds = rng.integers(0, 2**31 - 1, size=n)
        for i in range(0, n, self.bs):
            yield [(int(p), int(s)) for p, s in zip(draws[i:i + self.bs], seeds[i:i + self.bs])]


class DeepCluster(Baseline):
    name = "deepcluster"

    def validate(self) -> None:
        c = self.cfg.deepcluster
        check_positive(**{"deepcluster.size": c.size, "deepcluster.epochs": c.epochs, "deepcluster.lr": c.lr,
                          "deepcluster.batch_size": c.batch_size, "deepcluster.over_cluster": c.over_cluster})
        if c.momentum < 0 or c.weight_decay < 0:
            raise UsclfError("baseline: deepcluster.momentum and weight_decay must be >= 0")

    def check(self, images: np.ndarray, k: int) -> None:
        c = self.cfg.deepcluster
        if c.over_cluster * k > len(images):
            raise UsclfError(f"deepcluster: {c.over_cluster} x {k} = {c.over_cluster * k} clusters for only "
                             f"{len(images)} images; lower deepcluster.over_cluster or k")

    def fit(self, images: np.ndarray, ctx: FitContext) -> Assignment:
        c = self.cfg.deepcluster
        ds, rows = ctx.data, np.asarray(ctx.rows)
        k = c.over_cluster * ctx.k
        aug = AugmentConfig(size=c.size)
        torch.manual_seed(ctx.seed)
        model = build_classifier(c.backbone, "multilabel", num_classes=k).to(ctx.device)
        step = DeepClusterStep(rows, ctx.device)
        state = {"features": None}

        def recluster(m, epoch: int) -> dict:
            """k-means on L2-normalised features -> new pseudo-labels; new head; NMI with the last ones."""
            f = infer(m, ds, rows, aug, batch_size=c.batch_size, device=ctx.device)["features"]
            f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            # one k-means run per epoch, as DeepCluster's faiss k-means (restarts cost epochs on CPU)
            labels, _ = kmeans(f, k, ctx.seed + epoch + 1, n_init=1)
            before = step.pseudo.cpu().numpy().copy()
            step.pseudo.copy_(torch.as_tensor(labels))
            m.head.fc.reset_parameters()
            if trainer.optimizer is not None:   # the new head starts without momentum
                for p in m.head.parameters():
                    trainer.optimizer.state.pop(p, None)
            state["features"] = f
            return {"nmi_prev": nmi(before, labels)}

        cfg = TrainConfig(epochs=c.epochs, optim=OptimConfig(name="sgd", lr=c.lr, momentum=c.momentum,
                                                             weight_decay=c.weight_decay),
                          seed=ctx.seed, device=str(ctx.device), progress=ctx.progress, restore_best=False,
                          ckpt_every=None)
        def recluster_after(epoch, m):
            return recluster(m, epoch)

        trainer = Trainer(model, cfg, step, ctx.out / "deepcluster_checkpoints", ctx.tracker,
                          on_epoch_end=recluster_after)
        recluster(model, -1)              # pseudo-labels for the first epoch from the initial network
        loader = make_loader(UltrasoundDataset(ds, rows, views=("weak",), aug=aug),
                             UniformPseudoLabelBatches(step.pseudo, c.batch_size, ctx.seed))
        res = trainer.fit(loader, resume=ctx.resume)
        if state["features"] is None:     # a finished run resumed: redo its last clustering, same seed
            recluster(model, c.epochs - 1)
        labels = step.pseudo.cpu().numpy()
        return Assignment(one_hot(labels, k), state["features"], {"steps": res.steps, "clusters_used": float(
            len(np.unique(labels)))})
