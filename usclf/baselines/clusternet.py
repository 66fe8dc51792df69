"""PICA and LSD (paper Sec. 2.2) as baselines: the same pretrain method objects (configs/methods.yaml, family
pretrain) trained on exam-level batches of the fitted images, so that deep clustering is scored beside k-means,
DEC and DeepCluster with exactly the baselines' protocol (same images, same K, same matching and metrics)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import UltrasoundDataset
from ..data.sampler import ExamBatchSampler, make_loader
from ..data.transforms import AugmentConfig
from ..eval.inference import infer
from ..methods import method_class
from ..models.heads import build_classifier
from ..train.loop import OptimConfig, TrainConfig, Trainer
from .registry import Assignment, Baseline, FitContext, check_positive


class _ClusterNet(Baseline):
    """ResNet + softmax cluster head trained with the pretrain method `name` (its options: clusternet.options)."""

    def validate(self) -> None:
        c = self.cfg.clusternet
        check_positive(**{"clusternet.size": c.size, "clusternet.epochs": c.epochs, "clusternet.lr": c.lr,
                          "clusternet.exams_per_batch": c.exams_per_batch,
                          "clusternet.max_images_per_exam": c.max_images_per_exam})
        method_class("pretrain", self.name)(c.options)   # unknown or bad options: one line, before any run

    def fit(self, images: np.ndarray, ctx: FitContext) -> Assignment:
        c = self.cfg.clusternet
        ds, rows = ctx.data, np.asarray(ctx.rows)
        aug = AugmentConfig(size=c.size)
        data = UltrasoundDataset(ds, rows, views=("weak", "weak"), aug=aug)   # two independent draws, as pretrain
        sampler = ExamBatchSampler(data.exam_ids, c.exams_per_batch, c.max_images_per_exam, seed=ctx.seed)
        torch.manual_seed(ctx.seed)
        model = build_classifier(c.backbone, "cluster", num_clusters=ctx.k)
        cfg = TrainConfig(epochs=c.epochs, optim=OptimConfig(name="adam", lr=c.lr), seed=ctx.seed,
                          device=str(ctx.device), progress=ctx.progress, restore_best=False)
        res = Trainer(model, cfg, method_class("pretrain", self.name)(c.options), ctx.out / f"{self.name}_checkpoints",
                      ctx.tracker).fit(make_loader(data, sampler), resume=ctx.resume)
        out = infer(model, ds, rows, aug, device=ctx.device)
        return Assignment(out["out"], out["features"], {"steps": res.steps})


class PICANet(_ClusterNet):
    name = "pica"


class LSDNet(_ClusterNet):
    name = "lsd"
