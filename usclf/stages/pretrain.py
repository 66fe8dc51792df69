"""`usclf pretrain`: deep clustering (PICA or LSD) on unlabelled exam-level batches (paper Sec. 2.2)."""
from __future__ import annotations

from dataclasses import dataclass, field
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..data.dataset import UltrasoundDataset
from ..data.sampler import ExamBatchSampler, make_loader
from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..validate import non_negative, one_of
from ..eval.clustering import combination_vocabulary
from ..losses.pica import cluster_size_entropy
from ..methods import PRETRAIN, method_class
from ..models.heads import build_classifier
from ..models.modelfile import save_model_file
from ..tracking import Tracker
from ..train.distributed import gather_with_grad, get_dist_info, init_distributed
from ..train.loop import TrainConfig, Trainer, seed_everything
from .evaluate import EvaluateConfig, evaluate
from .run_dir import prepare_run_dir
from .common import DataConfig, ModelConfig, open_split, preprocess_meta, rows_in

METHODS = tuple(PRETRAIN)


@dataclass
class PretrainConfig:
    """Deep-clustering pretraining; defaults from the paper (Sec. 2.2, 3.2) unless noted."""
    method: str = "lsd"                  # pica | lsd (PICA with the symmetric-Dirichlet size prior)
    lam: float = 2.0                     # lambda: PICA's default, used by the paper (Sec. 4, Table 1)
    epsilon: float = 0.01                # LSD alpha = 1 + epsilon (Eq. 6); "slightly higher than 1"
    k: int | None = None                 # clusters; None = size of the label-combination vocabulary (Sec. 2.2.3)
    min_count: int = 1                   # label sets seen fewer times are not counted in the vocabulary
    train_splits: list[str] = field(default_factory=lambda: ["unlabeled"])  # labels are never read
    out: str = "runs/pretrain"
    evaluate_after: bool = True          # evaluate on val/test when they exist; metrics land in this run
    experiment: str = "usclf-pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        one_of("method", self.method, METHODS)
        non_negative("lam", self.lam)  # PICA's lambda weighs a penalty: a negative one rewards collapse
        non_negative("epsilon", self.epsilon)
        if self.k is not None and self.k < 2:
            raise UsclfError(f"k must be >= 2 clusters or null (= the label-combination vocabulary), got {self.k}")
        if self.min_count < 1:
            raise UsclfError(f"min_count must be >= 1, got {self.min_count}")
        if not self.train_splits:
            raise UsclfError("train_splits must name at least one split")


def clustering_loss(method: str, lam: float, epsilon: float):
    """The registered method's loss as a function of the two views' probabilities -> (total, parts)."""
    return method_class("pretrain", method)(lam, epsilon).loss


def effective_clusters(p: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the argmax cluster sizes): 1 when every image lands in one cluster, K when balanced."""
    with torch.no_grad():
        n = torch.bincount(p.argmax(1), minlength=p.shape[1]).double()
        z = n / n.sum().clamp_min(1)
        return torch.exp(-(z * torch.log(z.clamp_min(1e-12))).sum()).float()


def collapse_warning(history: list[dict], k: int) -> str | None:
    """A one-line warning when the last epoch used fewer than max(1.5, K/4) effective clusters (our rule)."""
    eff = history[-1].get("train/effective_clusters") if history else None
    if eff is None or eff >= max(1.5, k / 4):
        return None
    return (f"warning: the clustering collapsed: {eff:.2f} effective clusters of K={k} in the last epoch "
            "(exp of the entropy of the argmax sizes); train longer, raise lam, or lower the learning rate")


def default_k(ds, min_count: int) -> tuple[int, list]:
    """K = number of label combinations among labelled training images (paper Sec. 2.2.3)."""
    rows = np.flatnonzero(ds.manifest["split"].isin(["train", "val"]).to_numpy())
    if len(rows) == 0:
        raise UsclfError("cannot derive K: no labelled train/val images; set k= explicitly")
    vocab, _ = combination_vocabulary(ds.labels(rows).astype(int), min_count=min_count)
    return len(vocab), [list(map(int, v)) for v in vocab]


def make_step(loss_fn):
    """Step: both augmented views in one forward pass; P gathered across ranks before the loss."""
    def step(model, batch, ctx):
        v1, v2 = batch["views"]
        n = v1.shape[0]
        p = model(torch.cat([v1, v2]))  # one pass: BatchNorm sees both views as one batch
        x, y = gather_with_grad(p[:n]), gather_with_grad(p[n:])
        loss, parts = loss_fn(x, y)
        return loss, {**parts, "size_entropy": cluster_size_entropy(x.detach()),
                      "effective_clusters": effective_clusters(x.detach())}
    return step


def pretrain(cfg: PretrainConfig, resume: bool = False, tracking_uri: str | None = None,
             parent_run_id: str | None = None) -> Path:
    """Train the clustering model; returns the path of the model file (last-epoch weights, paper Sec. 3.2)."""
    loss_fn = clustering_loss(cfg.method, cfg.lam, cfg.epsilon)
    dist = init_distributed() if get_dist_info().world_size > 1 else get_dist_info()
    ds, dhash = open_split(cfg.data)
    k, vocab = (cfg.k, []) if cfg.k else default_k(ds, cfg.min_count)
    if cfg.k:
        vocab = default_k(ds, cfg.min_count)[1] if ds.manifest["split"].isin(["train", "val"]).any() else []
    rows = rows_in(ds, cfg.train_splits, "training images")
    out = prepare_run_dir(cfg, resume, write=dist.is_main)
    dataset = UltrasoundDataset(ds, rows, views=("weak", "weak"), aug=cfg.augment)  # PICA: 2 independent draws
    sampler = ExamBatchSampler(dataset.exam_ids, cfg.data.exams_per_batch, cfg.data.max_images_per_exam,
                               seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
    loader = make_loader(dataset, sampler, cfg.data.workers, pin_memory=True)
    seed_everything(cfg.train.seed)  # the head's (and a random backbone's) initial weights follow the seed
    model = build_classifier(cfg.model.backbone, "cluster", init=cfg.model.init,
                             imagenet_weights=cfg.model.imagenet_weights, num_clusters=k)
    params = {"stage": "pretrain", "method": cfg.method, "lambda": cfg.lam, "alpha": 1.0 + cfg.epsilon,
              "K": k, "seed": cfg.train.seed, "data_hash": dhash, "n_train_images": len(rows),
              "config": to_dict(cfg)}
    tags = {"stage": "pretrain", "method": cfg.method, "init": cfg.model.init}
    with Tracker(tracking_uri, cfg.experiment, f"pretrain-{cfg.method}-seed{cfg.train.seed}", params, tags,
                 parent_run_id, enabled=dist.is_main) as tracker:
        trainer = Trainer(model, cfg.train, make_step(loss_fn), out / "checkpoints", tracker)
        result = trainer.fit(loader, resume=resume)
        path = out / "model.pt"
        if dist.is_main:
            save_model_file(path, model, stage="pretrain", method=cfg.method, classes=list(ds.classes),
                            vocab=vocab, num_clusters=k, preprocess=preprocess_meta(ds, cfg.augment),
                            data_hash=dhash, steps=result.steps, epochs=result.epochs,
                            thresholds=[], matching=[])
            tracker.log_artifact(out / "config.yaml")
            print(f"pretrained {cfg.method.upper()} (K={k}) for {result.epochs} epochs / {result.steps} steps "
                  f"on {len(rows)} images -> {path}")
            warn = collapse_warning(result.history, k)
            tracker.log_metrics({"collapsed": float(warn is not None)})
            if warn:
                print(warn, file=sys.stderr)
            splits = set(ds.manifest["split"])
            if cfg.evaluate_after and {"val", "test"} <= splits:
                ev = evaluate(EvaluateConfig(model=str(path), out=str(out / "eval"), data=cfg.data,
                                             device=cfg.train.device), tracker=tracker, progress=cfg.train.progress)
                tracker.log_artifact(ev["model"], "model")  # with its cluster matching + thresholds: predict-ready
            else:
                tracker.log_artifact(path, "model")
    return path
