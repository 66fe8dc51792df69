"""Grayscale augmentations (docs/design.md §3.6): `weak`, `strong` and `eval` pipelines.

`build_transform(kind, cfg)` returns `fn(img_uint8_HxW, seed) -> float32 HxW`, normalised by
`(x / 255 - mean) / std`. The output depends only on the image and the seed (never on worker processes
or global RNG state), which is what makes a resumed run see exactly the same augmented batches.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np

from ..errors import UsclfError

KINDS = ("weak", "strong", "eval")
BACKENDS = ("cpu", "device")
# timm's ImageNet mean/std averaged over RGB: matches a conv1 whose ImageNet weights are summed over RGB.
IMAGENET_GRAY_MEAN = float(np.mean([0.485, 0.456, 0.406]))
IMAGENET_GRAY_STD = float(np.mean([0.229, 0.224, 0.225]))


@dataclass
class AugmentConfig:
    """Augmentation and normalisation settings shared by every stage."""
    size: int = 128                       # network input side (docs/design.md §3.6; cache may be larger)
    crop_scale: tuple[float, float] = (0.8, 1.0)   # "small random-resized crop" (docs/design.md §3.6)
    crop_ratio: tuple[float, float] = (0.9, 1.1)   # near-square: keeps organ shapes plausible
    rotate: float = 10.0                  # degrees, "small rotation" (docs/design.md §3.6)
    shift: float = 0.05                   # fraction of the side, "small shift" (docs/design.md §3.6)
    brightness: float = 0.2               # gain/brightness jitter (docs/design.md §3.6)
    contrast: float = 0.2
    hflip: bool = False                   # off: anatomical side matters (docs/design.md §3.6)
    strong_ops: int = 2                   # RandAugment N (FixMatch, Sohn et al. 2020: N=2)
    cutout: tuple[float, float] = (0.1, 0.3)  # CoarseDropout hole side, fraction of image (always last)
    mean: float = IMAGENET_GRAY_MEAN      # ImageNet mean averaged over RGB (timm in_chans=1 convention)
    std: float = IMAGENET_GRAY_STD
    # where weak/strong views are made: cpu = per image in the loader (cv2 + albumentations); device =
    # batched torch ops after the uint8 batch is moved (usclf/data/device_augment.py, docs/performance.md)
    backend: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsclfError(f"augment.backend must be one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if self.size < 8:
            raise UsclfError(f"augment.size must be >= 8, got {self.size}")
        for name in ("crop_scale", "crop_ratio", "cutout"):
            if len(getattr(self, name)) != 2:
                raise UsclfError(f"augment.{name} must be a [min, max] pair, got {getattr(self, name)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UsclfError(f"augment.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.std <= 0:
            raise UsclfError(f"augment.std must be > 0, got {self.std}")
        if not 0 <= self.strong_ops <= len(_STRONG_OP_NAMES):
            raise UsclfError(f"augment.strong_ops must be in 0..{len(_STRONG_OP_NAMES)}, got {self.strong_ops}")
        if not 0 < self.cutout[0] <= self.cutout[1] < 1:
            raise UsclfError(f"augment.cutout must satisfy 0 < min <= max < 1, got {self.cutout}")


class Speckle(A.ImageOnlyTransform):
    """Multiplicative speckle: img * (1 + sigma * N(0, 1)), sigma drawn per image, clipped to uint8."""

    def __init__(self, sigma: tuple[float, float] = (0.05, 0.25), p: float = 1.0):
        super().__init__(p=p)
        self.sigma = tuple(sigma)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        img = data["image"]
        sigma = self.random_generator.uniform(*self.sigma)
        noise = self.random_generator.standard_normal(img.shape[:2], dtype=np.float32)
        return {"gain": 1.0 + np.float32(sigma) * noise}

    def apply(self, img: np.ndarray, gain: np.ndarray, **params: Any) -> np.ndarray:
        g = gain.reshape(gain.shape + (1,) * (img.ndim - 2))
        return np.clip(img.astype(np.float32) * g, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sigma",)


_STRONG_OP_NAMES = ("contrast", "gamma", "blur", "speckle", "sharpen", "posterize")


def _strong_ops() -> list[A.BasicTransform]:
    # Magnitudes are RandAugment-like ranges sampled per image (FixMatch's random-magnitude variant).
    return [
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.4, 0.4), p=1.0),
        A.RandomGamma(gamma_limit=(60, 160), p=1.0),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5), p=1.0),
        Speckle(sigma=(0.05, 0.25), p=1.0),
        A.Sharpen(alpha=(0.2, 0.6), lightness=(0.8, 1.0), p=1.0),
        A.Posterize(num_bits=(3, 6), p=1.0),
    ]


def weak_params(h: int, w: int, cfg: AugmentConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, float, float, bool]:
    """The weak pipeline's draws for an h x w source: (2 x 3 source->output affine, alpha, beta, flip).

    Random-resized crop (torchvision's 10 tries, like albumentations' RandomResizedCrop) fused with the
    rotation/shift of albumentations' Affine, then RandomBrightnessContrast's gain/brightness. Shared by
    the cpu backend (cv2) and the device backend (usclf/data/device_augment.py), so both draw the same.
    """
    x0, y0, cw, ch = 0, 0, w, h
    for _ in range(10):
        area = rng.uniform(*cfg.crop_scale) * h * w
        ratio = math.exp(rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
        tw, th = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < tw <= w and 0 < th <= h:
            x0, y0, cw, ch = int(rng.integers(0, w - tw + 1)), int(rng.integers(0, h - th + 1)), tw, th
            break
    size = cfg.size
    crop = np.array([[size / cw, 0, -x0 * size / cw], [0, size / ch, -y0 * size / ch], [0, 0, 1]])
    rot = np.vstack([cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-cfg.rotate, cfg.rotate), 1.0),
                     [0, 0, 1]])
    rot[:2, 2] += rng.uniform(-cfg.shift, cfg.shift, 2) * size
    alpha = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    beta = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0  # brightness relative to the max value
    flip = bool(cfg.hflip and rng.random() < 0.5)
    return (rot @ crop)[:2], alpha, beta, flip


def _weak(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random-resized crop + rotation/shift fused into one cv2.warpAffine, then gain/brightness.

    Same sampling as albumentations' RandomResizedCrop (torchvision's 10 tries), Affine and
    RandomBrightnessContrast, at a tenth of their per-call cost (measured: pipelines/bench.py data).
    """
    m, alpha, beta, flip = weak_params(img.shape[0], img.shape[1], cfg, rng)
    size = cfg.size
    out = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = cv2.convertScaleAbs(out, alpha=alpha, beta=beta)  # saturating uint8, like albumentations
    if flip:
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def eval_resize(img: np.ndarray, size: int) -> np.ndarray:
    """The eval pipeline's resize of a square uint8 frame to size x size (exported models take its output)."""
    if img.shape == (size, size):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


class Transform:
    """Callable `fn(img_uint8_HxW, seed) -> float32 HxW`; deterministic given the seed."""

    def __init__(self, kind: str, cfg: AugmentConfig, compose: A.Compose | None):
        self.kind = kind
        self.size = cfg.size
        self.cfg = cfg
        self.compose = compose  # the strong ops (applied after the weak ones); None for weak and eval
        # x/255 then (x - mean)/std folded into one scale and offset.
        self.scale = np.float32(1.0 / (255.0 * cfg.std))
        self.offset = np.float32(-cfg.mean / cfg.std)

    def __call__(self, img: np.ndarray, seed: int | None = None) -> np.ndarray:
        if img.ndim != 2 or img.dtype != np.uint8:
            raise UsclfError(f"transform expects an H x W uint8 image, got shape {img.shape} {img.dtype}")
        if self.kind == "eval":  # plain resize, no randomness
            img = eval_resize(img, self.size)
        else:
            if seed is None:
                raise UsclfError(f"the '{self.kind}' transform needs a seed (got None)")
            seed = int(seed) & 0xFFFFFFFFFFFFFFFF
            rng = np.random.default_rng(seed)
            img = _weak(img, self.cfg, rng)
            if self.compose is not None:
                # One fresh generator pair shared by every op: cheaper than per-op reseeding, same determinism.
                self.compose.set_random_state(rng, random.Random(seed))
                img = self.compose(image=img)["image"]
                if img.ndim == 3:  # albumentations may hand back H x W x 1
                    img = img[..., 0]
        return img.astype(np.float32) * self.scale + self.offset

    def __repr__(self) -> str:
        return f"Transform({self.kind!r}, size={self.size})"


def build_transform(kind: str, cfg: AugmentConfig) -> Callable[[np.ndarray, int | None], np.ndarray]:
    """Build the `weak`, `strong` or `eval` pipeline: `fn(img_uint8_HxW, seed) -> float32 HxW`.

    weak = random-resized crop + small rotation/shift + brightness/contrast (+ optional h-flip);
    strong = weak + `strong_ops` ops picked at random from contrast, gamma, blur, speckle, sharpen,
    posterize, then CoarseDropout; eval = resize only. All are followed by mean/std normalisation.
    """
    if kind not in KINDS:
        raise UsclfError(f"unknown transform kind '{kind}'; choose one of {', '.join(KINDS)}")
    if kind in ("eval", "weak"):
        return Transform(kind, cfg, None)
    ops: list[A.BasicTransform] = []
    if cfg.strong_ops > 0:
        ops.append(A.SomeOf(_strong_ops(), n=cfg.strong_ops, replace=False, p=1.0))
    ops.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=tuple(cfg.cutout),
                               hole_width_range=tuple(cfg.cutout), fill=0, p=1.0))
    return Transform(kind, cfg, A.Compose(ops, seed=0, strict=False))
