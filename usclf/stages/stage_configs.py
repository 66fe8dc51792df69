"""The typed configs of the training stages (configs/*.yaml map onto these), each validated on construction
or by its stage before anything is written. Defaults cite the paper or a measurement."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..data.transforms import AugmentConfig
from ..errors import UsclfError
from ..methods import PRETRAIN, method_class
from ..train.loop import TrainConfig
from ..validate import one_of
from .common import DataConfig, ExamDataConfig, ModelConfig

METHODS = tuple(PRETRAIN)
TRAIN_SPLITS = ("train",)  # the labelled split finetune/semisup train on (label fraction or labeled_ids)


def check_eval_splits(cfg, training: tuple[str, ...] | list[str] = ()) -> None:
    """The development split (selection, thresholds) and the test split must be two named, different splits,
    and the test split held out: none of the splits the stage trains on (`training`)."""
    if not cfg.dev_split or not cfg.test_split or cfg.dev_split == cfg.test_split:
        raise UsclfError(f"dev_split and test_split must name two different splits (got '{cfg.dev_split}' and "
                         f"'{cfg.test_split}'): thresholds chosen on the test split would leak it")
    if cfg.test_split in training:
        raise UsclfError(f"test_split '{cfg.test_split}' is a split this stage trains on ({', '.join(training)}): "
                         "a test score on training images means nothing; use the held-out split (test)")


@dataclass
class PretrainConfig:
    """Deep-clustering pretraining; defaults from the paper (Sec. 2.2, 3.2) unless noted."""
    # Keys of an earlier version that are now the method's options: a one-line error names the new key.
    MOVED_KEYS: ClassVar[dict[str, str]] = {"lam": "options.lam", "epsilon": "options.epsilon"}
    method: str = "lsd"                  # a registered pretrain method (configs/methods.yaml): pica | lsd | ...
    # the method's own options (its Options dataclass; configs/methods.yaml has a help line for each):
    # lam (lambda, default 2.0 = PICA's, used by the paper Sec. 4, Table 1) and, for lsd, epsilon (alpha = 1 + eps)
    options: dict = field(default_factory=dict)
    k: int | None = None                 # clusters; None = size of the label-combination vocabulary (Sec. 2.2.3)
    min_count: int = 1                   # label sets seen fewer times are not counted in the vocabulary
    train_splits: list[str] = field(default_factory=lambda: ["unlabeled"])  # labels are never read
    out: str = "runs/pretrain"
    evaluate_after: bool = True          # evaluate on dev/test when they exist; metrics land in this run
    dev_split: str = "val"               # paper Sec. 2.2.3: matching + thresholds on the development set
    test_split: str = "test"
    experiment: str = "usclf-pretrain"
    data: ExamDataConfig = field(default_factory=ExamDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        one_of("method", self.method, METHODS)
        method_class("pretrain", self.method)(self.options)  # the options: one-line errors on load
        if self.k is not None and self.k < 2:
            raise UsclfError(f"k must be >= 2 clusters or null (= the label-combination vocabulary), got {self.k}")
        if self.min_count < 1:
            raise UsclfError(f"min_count must be >= 1, got {self.min_count}")
        if not self.train_splits:
            raise UsclfError("train_splits must name at least one split")
        check_eval_splits(self, tuple(self.train_splits))


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning; defaults from the paper (Sec. 2.2.4, 3.2) unless noted."""
    label_fraction: float = 1.0          # share of labelled train exams used (paper Fig. 6: 0.1/0.2/0.5/1.0)
    fraction_seed: int | None = None     # seed of the nested label subset; null = train.seed
    labeled_ids: str | None = None       # CSV of train image_ids to use instead of the fraction (usclf suggest)
    dev_split: str = "val"               # early stopping, best weights and per-class thresholds (paper Sec. 3.2)
    test_split: str = "test"             # reported only, never selected on
    out: str = "runs/finetune"
    experiment: str = "usclf-finetune"
    figures: bool = True                 # evaluate's t-SNE / per-class bars (off in multi-run studies)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # paper Sec. 3.2: early stopping after 7 epochs without validation improvement, best-val weights kept
    train: TrainConfig = field(default_factory=lambda: TrainConfig(patience=7))

    def __post_init__(self):
        check_eval_splits(self, TRAIN_SPLITS)


@dataclass
class SemisupConfig:
    """Semi-supervised training; defaults from the paper (Sec. 2.3, 3.2) and FixMatch (Sohn et al.)."""
    method: str = "fixmatch-twohead"     # a registered method (usclf.methods.SEMISUP); paper Sec. 4: two heads win
    options: dict = field(default_factory=dict)  # the method's own options (see its Options dataclass)
    teacher: str = "student"             # student | ema: pseudo-labels from the EMA weights (needs train.ema)
    tau: float = 0.95                    # FixMatch confidence threshold (`>=`)
    lambda_u: float = 1.0                # FixMatch weight of the unlabelled loss
    mu: int = 7                          # FixMatch unlabelled:labelled ratio (images per step: mu * B)
    # joint: labelled + weak + strong in one forward pass, BatchNorm over all (FixMatch; USB use_cat=True);
    # separate: three passes, each normalised by its own statistics (USB use_cat=False; a control, issue 23)
    forward: str = "joint"
    unlabeled_exams: int | None = None   # exams per unlabelled batch; null = round(mu * B / mean images per exam)
    min_count: int = 1                   # two-head vocabulary: label sets seen >= min_count times (docs/design.md §4.3)
    eval_every: int = 250                # steps between validations (not in the paper: 20 per 5000-step run)
    # Schedule rule (ours): with labeled_epochs E the run lasts max(train.max_steps, ceil(E * n_labelled / B))
    # steps, so the labelled stream gets at least the E epochs a supervised run would; null = train.max_steps.
    labeled_epochs: float | None = None
    label_fraction: float = 1.0          # share of labelled train exams used (paper Fig. 6: 0.1/0.2/0.5/1.0)
    fraction_seed: int | None = None     # seed of the nested label subset; null = train.seed
    labeled_ids: str | None = None       # CSV of train image_ids to use instead of the fraction (usclf suggest)
    dev_split: str = "val"               # best weights and per-class thresholds (paper Sec. 3.2)
    test_split: str = "test"             # reported only, never selected on
    unlabeled_splits: list[str] = field(default_factory=lambda: ["unlabeled"])
    unlabeled_train_rest: bool = True    # train exams outside the label fraction join the unlabelled pool
    diagnostics: bool = True             # pseudo-label precision/recall vs the truth where known (simulated data)
    out: str = "runs/semisup"
    experiment: str = "usclf-semisup"
    figures: bool = True                 # evaluate's t-SNE / per-class bars / gallery (off in studies)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # paper Sec. 3.2: a fixed 5000 steps, best-validation weights kept; no early stopping
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=5000))


def check_config(cfg: SemisupConfig) -> None:
    """One-line errors for settings that cannot work."""
    method_class("semisup", cfg.method)
    check_eval_splits(cfg, (*TRAIN_SPLITS, *cfg.unlabeled_splits))
    if cfg.mu < 1 or cfg.eval_every < 1 or cfg.min_count < 1:
        raise UsclfError(f"mu, eval_every and min_count must be >= 1 (got {cfg.mu}, {cfg.eval_every}, {cfg.min_count})")
    if cfg.unlabeled_exams is not None and cfg.unlabeled_exams < 1:
        raise UsclfError(f"unlabeled_exams must be >= 1 or null, got {cfg.unlabeled_exams}")
    if not 0.0 <= cfg.tau <= 1.0 or cfg.lambda_u < 0:
        raise UsclfError(f"need 0 <= tau <= 1 and lambda_u >= 0 (got tau={cfg.tau}, lambda_u={cfg.lambda_u})")
    if cfg.labeled_epochs is not None and not cfg.labeled_epochs > 0:
        raise UsclfError(f"labeled_epochs must be > 0 or null, got {cfg.labeled_epochs}")
    if cfg.teacher == "ema" and not cfg.train.ema:
        raise UsclfError("teacher=ema needs train.ema (an EMA decay such as 0.999)")
    leak = sorted(set(cfg.unlabeled_splits) & {cfg.dev_split, cfg.test_split})
    if leak:
        raise UsclfError(f"unlabeled_splits must not include {', '.join(leak)}: it would train on evaluation images")
