"""Typed configuration of `usclf baseline`; one section per method family (unused sections are ignored)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FeatureConfig:
    """Fixed features for k-means (paper 001, docs/design.md §4.8)."""
    pca_dims: int = 20          # PCA-20
    hog_cell: int = 8           # HOG 8x8-pixel cells ...
    hog_block: int = 2          # ... in 2x2-cell blocks
    lbp_cell: int = 16          # LBP histograms over 16x16-pixel cells
    lbp_radius: int = 1
    lbp_points: int = 8
    n_init: int = 20            # k-means restarts (DEC: n_init = 20)


@dataclass
class AEConfig:
    """Dense autoencoder pretraining (paper 000 Sec. 4.2-4.3)."""
    dims: list[int] = field(default_factory=lambda: [500, 500, 1000, 10])  # encoder [a, 500, 500, 1000, 10]
    epochs: int = 400           # paper 000: 400 pretraining epochs
    batch_size: int = 256       # paper 000: batch 256
    lr: float = 3.0e-4          # paper 000: Adam 0.0003 for pretraining
    weights: str | None = None  # reuse the autoencoder.pt of an earlier run instead of pretraining


@dataclass
class ConvAEConfig:
    """Convolutional autoencoder of CDEC / CIDEC (paper 001 Sec. II-D; it used K = 25 on its PACS data)."""
    filters: list[int] = field(default_factory=lambda: [32, 32, 64, 64, 64])  # 5 conv + 2x2 max-pool blocks
    code: int = 100             # dense code between encoder and decoder
    epochs: int = 100           # paper 001 gives no count (trained to a maximum or a 0.1 % loss change)
    batch_size: int = 50        # paper 001: mini-batch 50
    lr: float = 1.0e-3          # paper 001: Adam 0.001, MSE
    weights: str | None = None  # reuse the autoencoder.pt of an earlier run instead of pretraining


@dataclass
class DECConfig:
    """DEC / IDEC clustering phase (Xie et al. 2016; Guo et al. 2017; paper 000 settings)."""
    lr: float = 5.0e-4          # paper 000: Adam 0.0005 for fine-tuning
    batch_size: int = 256       # paper 000: batch 256
    update_interval: int | None = None  # steps between target refreshes; None = one pass over the data
                                        # (official DEC/IDEC: 140 on MNIST, 30 on USPS)
    tol: float = 0.001          # stop when fewer than 0.1 % of the labels change between refreshes (DEC, and
                                # the official DCEC code; paper 001 states a 0.1 % loss change instead)
    max_steps: int = 20000
    gamma: float = 0.1          # IDEC: L = L_r + gamma * L_c (paper 000 gamma_1 = 0.1, Guo et al.)
    alpha: float = 1.0          # Student-t degrees of freedom (DEC: 1)


@dataclass
class DCECConfig:
    """DCEC (Guo et al. 2017), settings of the official Keras code (XifengGuo/DCEC, DCEC.py / ConvAE.py)."""
    filters: list[int] = field(default_factory=lambda: [32, 64, 128])  # 5x5/5x5/3x3 convs, stride 2, ReLU
    code: int | None = None     # dense embedding; None = K (official: filters[3] = n_clusters)
    epochs: int = 200           # official: 200 pretraining epochs, batch 256, Keras 'adam' (lr 0.001), 'mse'
    batch_size: int = 256
    lr: float = 1.0e-3
    weights: str | None = None  # reuse the autoencoder.pt of an earlier run instead of pretraining
    # official clustering phase: adam 0.001, batch 256, update_interval 140, tol 0.001, maxiter 2e4,
    # loss_weights [gamma = 0.1 (kld), 1 (mse)], k-means n_init 20 (features.n_init)
    cluster: DECConfig = field(default_factory=lambda: DECConfig(lr=1.0e-3, batch_size=256, update_interval=140,
                                                                 tol=0.001, max_steps=20000, gamma=0.1))


@dataclass
class CNNConfig:
    """IDCEC's classifier on the reliable samples (paper 004 Sec. 4.3, 4.6; official idcec.py)."""
    filters: list[int] = field(default_factory=lambda: [32, 64])  # 5x5 conv + ReLU + 2x2 max-pool per block
    dense: int = 1024           # then a dense 1024 ReLU layer, dropout, a dense K softmax
    dropout: float = 0.5        # paper Sec. 4.6: dropout 0.5 before the last fully connected layer
    epochs: int = 50            # official idcec.py: 50 epochs, batch 256 (the paper: "until convergence")
    batch_size: int = 256
    lr: float = 1.0e-4          # paper Sec. 4.3: Adam 1e-4, cross-entropy


@dataclass
class IDCECConfig(DCECConfig):
    """IDCEC (paper 004, Lu et al. 2022; official code hulu88/IDCEC): the official code's pooled autoencoder
    (5x5 conv + LeakyReLU(0.2) + 2x2 max-pool twice, 3x3 stride-2 conv, code = K; mirrored with upsampling)."""
    epochs: int = 400           # official cae.py: 400 pretraining epochs (paper: no count), batch 256, adam
    # official dcec.py of IDCEC: maxiter 4000 (paper Sec. 3.2: stop at the maximum iterations), interval 140,
    # tol 0.001; gamma is alpha of Eq. 1 = 0.1 (Sec. 4.3)
    cluster: DECConfig = field(default_factory=lambda: DECConfig(lr=1.0e-3, batch_size=256, update_interval=140,
                                                                 tol=0.001, max_steps=4000, gamma=0.1))
    beta: float = 1.0e-6        # Eq. 1 weight of L_w (Eq. 6), Sec. 4.3; the official code has no such term
    noise: float = 0.1          # std of the Gaussian noise on the [0, 1] inputs, pretraining and clustering (Sec. 3.1
                                # "a small amount of random noise", no value; the official code adds none)
    rotation: float = 5.0       # augmentation in pretraining and CNN training: official ImageDataGenerator
    shift: float = 0.05         # rotation_range 5 deg, width/height_shift_range 0.05
    zoom: float = 0.0           # Sec. 4.3/4.6 mention scaling without a range; the official code uses none
    lam: float = 0.65           # Sec. 4.3 lambda (official default 0.60, 0.98 for USPS)
    rounds: int = 1             # Algorithm 1: one selection + CNN; official idcec.py runs 30 rounds, each
                                # re-selecting on k-means of the previous CNN's softmax outputs (rounds=30)
    cnn: CNNConfig = field(default_factory=CNNConfig)


@dataclass
class GraphConfig:
    """Graph embedding of paper 000 (IDEC + graph)."""
    k: int = 1                  # Delta(x): the nearest neighbour (Eq. 7)
    gamma_pretrain: float = 0.001  # Eq. 8: L = L_r + gamma * L_g during pretraining
    gamma: float = 0.001        # Eq. 9: gamma_2 during fine-tuning (paper: 0.001-0.004)


@dataclass
class DeepClusterConfig:
    """DeepCluster as adapted by DeepMCAT (paper 002 Sec. 2-3)."""
    backbone: str = "resnet18"  # usclf's backbone (paper 002: VGG16-BN; any timm name works)
    size: int = 64              # network input size in pixels (images are resized / augmented to it)
    epochs: int = 200           # paper 002: 200 epochs, last model kept
    batch_size: int = 256       # paper 002
    lr: float = 0.05            # paper 002: SGD 0.05, momentum 0.9, weight decay 1e-5
    momentum: float = 0.9
    weight_decay: float = 1.0e-5
    over_cluster: int = 8       # paper 002: 8x as many clusters as classes


@dataclass
class ClusterNetConfig:
    """PICA / LSD as baselines: configs/pretrain_lsd.yaml's network and optimiser, at the DeepCluster input size."""
    backbone: str = "resnet18"
    size: int = 64              # as deepcluster.size (pretrain_lsd.yaml: 128)
    epochs: int = 100           # pretrain_lsd.yaml: 100 epochs of exam-level batches
    exams_per_batch: int = 16   # pretrain_lsd.yaml: 16 exams x <= 16 images a batch (paper Sec. 2.2.2)
    max_images_per_exam: int = 16
    lr: float = 1.0e-4          # pretrain_lsd.yaml: Adam 1e-4 (paper Sec. 3.2)
    options: dict = field(default_factory=dict)   # the method's options (configs/methods.yaml), e.g. {lam: 2.0}


@dataclass
class BaselineConfig:
    """One baseline clustering run: fit on `fit_splits`, then the shared matching + evaluation."""
    method: str = "dec"         # see `usclf baseline --help` for the registry
    data: str = ""              # dataset folder from `usclf ingest`, or a MedMNIST/USPS/MNIST .npz
    out: str = "runs/baseline"
    split_seed: int = 0         # manifest_split_seed<S>.csv when present (npz data keeps its own splits)
    fit_splits: list[str] = field(default_factory=lambda: ["all"])  # the papers cluster all images together
    k: int | None = None        # None = number of label combinations (= classes for single-label data)
    seed: int = 0
    dev_split: str = "val"      # Algorithm 1 matching + per-class thresholds (when fitted and labelled)
    test_split: str = "test"
    device: str = "auto"
    progress: bool = True
    figures: bool = True
    max_points: int = 2000               # t-SNE subsample of the figure (seconds on CPU), as EvaluateConfig
    experiment: str = "usclf-baselines"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    cae: ConvAEConfig = field(default_factory=ConvAEConfig)
    dec: DECConfig = field(default_factory=DECConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    dcec: DCECConfig = field(default_factory=DCECConfig)
    idcec: IDCECConfig = field(default_factory=IDCECConfig)
    deepcluster: DeepClusterConfig = field(default_factory=DeepClusterConfig)
    clusternet: ClusterNetConfig = field(default_factory=ClusterNetConfig)
