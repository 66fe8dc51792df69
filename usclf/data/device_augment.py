"""The weak and strong pipelines as batched torch ops on the training device (`augment.backend=device`).

Split in two so that the loader stays cheap and the accelerator does the pixel work:

* `view_params(kind, cfg, seed, h, w)` (CPU, in the loader's workers): every random draw of one view as a
  vector of `N_PARAMS` numbers - a few microseconds per image. The weak draws come from
  `transforms.weak_params`, the very function the cpu backend uses, so for the same seed both backends
  crop, rotate, shift and jitter identically; the strong draws follow albumentations' samplers (SomeOf
  picks `strong_ops` of the six ops, applied in list order; magnitudes as in `transforms._strong_ops`).
* `augment_batch(raw, params, cfg)` (device): B x H x W uint8 -> B x 1 x S x S float, normalised. One
  `grid_sample` for crop+rotation+shift, then elementwise ops and small grouped convolutions (on a CPU
  device: the same draws applied per image with cv2 in uint8, which is faster there). Results
  are rounded to uint8 levels where cv2/albumentations round, so the output distribution matches the
  cpu backend's (tests/test_device_augment.py). Speckle noise is a counter-based hash of (view seed,
  pixel), so a view depends on its seed only - not on the batch it lands in, the device or the worker.

`DeviceAugmentLoader` wraps a DataLoader whose dataset has `backend=device`: it moves each uint8 batch
(pinned, non_blocking) and replaces every {'raw', 'aug'} dict in it by {'views': [...]}.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .transforms import _STRONG_OP_NAMES, AugmentConfig, weak_params

# Parameter vector layout (float64; the noise seed < 2**32 is exact).
AFFINE = slice(0, 6)      # source pixel -> output pixel, 2 x 3 (the cv2.warpAffine matrix of the cpu backend)
ALPHA, BETA, FLIP = 6, 7, 8
OPS = slice(9, 15)        # 1 where the strong op (in _STRONG_OP_NAMES order) is applied
CONTRAST, GAMMA, KSIZE, SIGMA, SPECKLE, SHARP_A, SHARP_L, BITS = range(15, 23)
CUT = slice(23, 27)       # cutout box x0, y0, x1, y1 (empty for weak views)
NOISE_SEED = 27
N_PARAMS = 28


def view_params(kind: str, cfg: AugmentConfig, seed: int, h: int, w: int) -> np.ndarray:
    """All random draws of one `weak` or `strong` view of an h x w image, as a float64 vector."""
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)
    p = np.zeros(N_PARAMS)
    m, alpha, beta, flip = weak_params(h, w, cfg, rng)
    p[AFFINE] = m.ravel()
    p[ALPHA], p[BETA], p[FLIP] = alpha, beta, float(flip)
    if kind == "strong":  # one vectorised draw (per-call overhead dominates here), mapped to each range
        u = rng.random(len(_STRONG_OP_NAMES) + 13)
        n_ops = len(_STRONG_OP_NAMES)
        p[OPS][np.argsort(u[:n_ops])[:cfg.strong_ops]] = 1.0  # SomeOf: a uniform subset, no replacement
        c = u[n_ops:]
        p[CONTRAST] = 1.0 + (-0.4 + 0.8 * c[0])            # RandomBrightnessContrast(contrast_limit=0.4)
        p[GAMMA] = (60 + 100 * c[1]) / 100.0                # RandomGamma(gamma_limit=(60, 160))
        p[KSIZE] = 3 if c[2] < 1 / 3 else 5                 # randint(3, 5), even sizes rounded up
        p[SIGMA] = 0.3 + 1.2 * c[3]
        p[SPECKLE] = 0.05 + 0.2 * c[4]                      # Speckle(sigma=(0.05, 0.25))
        p[SHARP_A], p[SHARP_L] = 0.2 + 0.4 * c[5], 0.8 + 0.2 * c[6]
        p[BITS] = 3 + min(int(4 * c[7]), 3)                 # Posterize(num_bits=(3, 6))
        s, (lo, hi) = cfg.size, cfg.cutout                  # CoarseDropout, one hole, float size range
        hh, hw = int(s * (lo + (hi - lo) * c[8])), int(s * (lo + (hi - lo) * c[9]))
        y0, x0 = int(c[10] * (s - hh + 1)), int(c[11] * (s - hw + 1))
        p[CUT] = (x0, y0, x0 + hw, y0 + hh)
        p[NOISE_SEED] = float(int(c[12] * 2**32))
    return p


# ---------------------------------------------------------------------------------------- device ops
_M32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding uint32 values (products wrap mod 2**64)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def hash_normal(seeds: torch.Tensor, n: int) -> torch.Tensor:
    """B x n standard normals, a pure function of each row's uint32 seed: Box-Muller on one murmur3 hash
    per (seed, counter), its high and low 16 bits as the two uniforms (|z| <= 4.9; ample for speckle)."""
    idx = torch.arange(n, device=seeds.device, dtype=torch.int64)[None]
    base = _fmix32((seeds.to(torch.int64)[:, None] * 0x9E3779B1 + 0x7F4A7C15) & _M32)
    h = _fmix32((base + idx) & _M32)
    u1 = ((h >> 16).to(torch.float32) + 0.5) * (1.0 / 65536)
    u2 = (h & 0xFFFF).to(torch.float32) * (1.0 / 65536)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def _conv_per_image(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x: b x 1 x S x S, k: b x kh x kw (odd) -> correlation of image i with k[i], reflect-101 border."""
    b, _, s, _ = x.shape
    ph, pw = k.shape[1] // 2, k.shape[2] // 2
    xp = F.pad(x.reshape(1, b, s, s), (pw, pw, ph, ph), mode="reflect")
    return F.conv2d(xp, k[:, None], groups=b).reshape(b, 1, s, s)


def _q(x: torch.Tensor) -> torch.Tensor:
    """Round and saturate to uint8 levels (cv2's saturate_cast), kept in float."""
    return x.round().clamp_(0, 255)


def _gaussian_1d(ksize: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """b x 5 normalised Gaussian taps (albumentations' create_gaussian_kernel_1d), zero outside ksize."""
    t = torch.arange(-2, 3, device=sigma.device, dtype=sigma.dtype)[None]
    g = torch.exp(-0.5 * (t / sigma[:, None]) ** 2) * (t.abs() <= ksize[:, None] // 2)
    return g / g.sum(1, keepdim=True)


def _strong_op(name: str, x: torch.Tensor, p: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """One strong op on uint8-valued float images x (b x 1 x S x S) with per-image parameters p
    (float32) and noise seeds (int64)."""
    c = lambda i: p[:, i].view(-1, 1, 1, 1)  # noqa: E731
    if name == "contrast":   # albucore multiply_add LUT: clip then truncate to uint8
        return (x * c(CONTRAST)).clamp(0, 255).floor()
    if name == "gamma":      # uint8 LUT: (v/255)**gamma * 255, truncated
        return (torch.pow(x / 255.0, c(GAMMA)) * 255.0 + 1e-4).floor().clamp(0, 255)
    if name == "blur":       # separable Gaussian (cv2.sepFilter2D), rounded
        g = _gaussian_1d(p[:, KSIZE], p[:, SIGMA])
        return _q(_conv_per_image(x, g[:, :, None] * g[:, None, :]))
    if name == "speckle":    # clip(img * (1 + sigma * N(0, 1))) truncated to uint8
        s = x.shape[-1]
        noise = hash_normal(seeds, s * s).view(-1, 1, s, s)
        return (x * (1.0 + c(SPECKLE) * noise)).clamp(0, 255).floor()
    if name == "sharpen":    # albumentations Sharpen(method="kernel") via cv2.filter2D, rounded
        a, light = p[:, SHARP_A], p[:, SHARP_L]
        k = -a[:, None, None].expand(-1, 3, 3).clone()
        k[:, 1, 1] = (1 - a) + a * (8 + light)
        return _q(_conv_per_image(x, k))
    if name == "posterize":  # keep the top `bits` bits
        step = torch.pow(2.0, 8 - c(BITS))
        return torch.floor(x / step) * step
    raise ValueError(name)


def augment_batch(raw: torch.Tensor, params: torch.Tensor, cfg: AugmentConfig,
                  kernels: str | None = None) -> torch.Tensor:
    """raw: B x H x W uint8 (any device); params: B x N_PARAMS (`view_params`) -> B x 1 x S x S float32.

    `kernels`: 'accel' (batched torch ops: grid_sample warp, hashed speckle noise; what an accelerator
    runs) or 'cpu' (per image in uint8 with the cpu backend's own cv2 calls and lookup tables, `cv2_op`:
    float ops over a whole batch are slower than uint8 tables on a CPU); default: 'cpu' on a CPU device,
    else 'accel'. Both are deterministic per seed; tests/test_device_augment.py checks both on the CPU.
    """
    kernels = kernels or ("cpu" if raw.device.type == "cpu" else "accel")
    dev, s = raw.device, cfg.size
    b, h, w = raw.shape
    sel = params[:, OPS].cpu() > 0  # which images get which strong op: decided on the host, no device sync
    has_cut = bool((params[:, CUT.start + 2] > params[:, CUT.start]).any())
    p = params.to(torch.float32).to(dev, non_blocking=True)
    if kernels == "cpu":  # per image with cv2 in uint8: the cpu backend's calls, without its per-call overhead
        u8 = _warp_cv2(raw, params.cpu(), s)
        if bool(sel.any()):
            _strong_cv2(u8, params.cpu().numpy(), sel.numpy())
        x = torch.from_numpy(u8)[:, None].to(torch.float32)
    else:  # crop + rotation + shift (+ flip): one bilinear grid_sample, zero border (BORDER_CONSTANT)
        theta = _sampling_theta(params.cpu(), s, h, w)
        grid = F.affine_grid(theta.to(dev, non_blocking=True), [b, 1, s, s], align_corners=False)
        x = F.grid_sample(raw[:, None].to(torch.float32), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        x.round_()  # cv2 rounds the warp to uint8; a bilinear mix of 0..255 stays in range
        # cv2.convertScaleAbs: saturate(|alpha * x + beta|)
        x.mul_(p[:, ALPHA].view(-1, 1, 1, 1)).add_(p[:, BETA].view(-1, 1, 1, 1)).abs_().round_().clamp_(max=255)
        seeds = params[:, NOISE_SEED].to(torch.int64).to(dev, non_blocking=True)  # float32 cannot hold it
        for j, name in enumerate(_STRONG_OP_NAMES):  # albumentations' SomeOf applies in list order
            idx = torch.nonzero(sel[:, j]).flatten()
            if len(idx) == 0:
                continue
            idx = idx.to(dev, non_blocking=True)
            out = _strong_op(name, x.index_select(0, idx), p.index_select(0, idx), seeds.index_select(0, idx))
            x.index_copy_(0, idx, out)
    if has_cut:  # CoarseDropout, fill 0
        cols = torch.arange(s, device=dev, dtype=torch.float32)
        cut = p[:, CUT]
        inx = (cols[None] >= cut[:, 0:1]) & (cols[None] < cut[:, 2:3])
        iny = (cols[None] >= cut[:, 1:2]) & (cols[None] < cut[:, 3:4])
        x = x.masked_fill((iny[:, :, None] & inx[:, None, :])[:, None], 0.0)
    return x.mul_(1.0 / (255.0 * cfg.std)).add_(-cfg.mean / cfg.std)


def _warp_cv2(raw: torch.Tensor, params: torch.Tensor, s: int) -> torch.Tensor:
    """Warp (cv2.warpAffine, flip folded into the matrix) and gain/brightness (cv2.convertScaleAbs) of a
    CPU batch, image by image: exactly the cpu backend's pixels, as a B x s x s uint8 array."""
    out = np.empty((len(raw), s, s), np.uint8)
    src = raw.numpy()
    p = params.to(torch.float64).numpy()
    mats = p[:, AFFINE].reshape(-1, 2, 3).copy()
    flip = p[:, FLIP] > 0
    mats[flip] = np.array([[-1.0, 0, s - 1], [0, 1, 0]]) @ np.concatenate(
        [mats[flip], np.broadcast_to([[[0, 0, 1.0]]], (int(flip.sum()), 1, 3))], 1)
    tmp = np.empty((s, s), np.uint8)
    for i in range(len(src)):
        cv2.warpAffine(src[i], mats[i], (s, s), dst=tmp, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.convertScaleAbs(tmp, dst=out[i], alpha=float(p[i, ALPHA]), beta=float(p[i, BETA]))
    return out


_LEVELS = np.arange(256, dtype=np.float32)


def cv2_op(name: str, img: np.ndarray, q: np.ndarray) -> np.ndarray:
    """One strong op on an S x S uint8 image with its parameter row q (float64, `view_params`), with the
    kernels albumentations calls (uint8 lookup tables, cv2 filters, numpy's normal generator); the
    magnitudes pass through float32 like the accelerator's ops."""
    f = lambda i: np.float32(q[i])  # noqa: E731
    if name == "contrast":
        return cv2.LUT(img, np.floor(np.clip(_LEVELS * f(CONTRAST), 0, 255)).astype(np.uint8))
    if name == "gamma":
        lut = np.floor(np.power(_LEVELS / np.float32(255), f(GAMMA)) * np.float32(255) + np.float32(1e-4))
        return cv2.LUT(img, np.clip(lut, 0, 255).astype(np.uint8))
    if name == "blur":
        t = np.arange(-2, 3, dtype=np.float32)
        g = np.exp(np.float32(-0.5) * (t / f(SIGMA)) ** 2) * (np.abs(t) <= int(q[KSIZE]) // 2)
        g = (g / g.sum()).astype(np.float32)
        return cv2.sepFilter2D(img, -1, g, g, borderType=cv2.BORDER_REFLECT_101)
    if name == "speckle":
        noise = np.random.default_rng(int(q[NOISE_SEED])).standard_normal(img.shape, dtype=np.float32)
        return np.clip(img.astype(np.float32) * (np.float32(1) + f(SPECKLE) * noise), 0, 255).astype(np.uint8)
    if name == "sharpen":
        a, light = f(SHARP_A), f(SHARP_L)
        k = np.full((3, 3), -a, np.float32)
        k[1, 1] = (1 - a) + a * (8 + light)
        return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)
    if name == "posterize":
        return img & np.uint8((0xFF << (8 - int(q[BITS]))) & 0xFF)
    raise ValueError(name)


def _strong_cv2(u8: np.ndarray, params: np.ndarray, sel: np.ndarray) -> None:
    """Each image's chosen strong ops, in list order (albumentations' SomeOf), on the uint8 batch in place."""
    for i in np.flatnonzero(sel.any(1)):
        for j in np.flatnonzero(sel[i]):
            u8[i] = cv2_op(_STRONG_OP_NAMES[j], u8[i], params[i])


def _sampling_theta(params: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """B x 2 x 3 `affine_grid` matrices (align_corners=False) that sample, for every output pixel of the
    s x s view, the source pixel cv2.warpAffine would (its matrix inverted), mirrored where FLIP is set.
    Host-side float64 arithmetic on B 3 x 3 matrices."""
    m = params[:, AFFINE].to(torch.float64).view(-1, 2, 3)
    a, b_, c, d, e, f = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2], m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b_ * d
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    inv = torch.stack([torch.stack([e, -b_, b_ * f - c * e]) / det, torch.stack([-d, a, c * d - a * f]) / det,
                       torch.stack([zero, zero, one])]).permute(2, 0, 1)        # output px -> source px
    flip = params[:, FLIP].to(torch.float64) > 0
    mirror = torch.eye(3, dtype=torch.float64).repeat(len(a), 1, 1)
    mirror[flip, 0, 0], mirror[flip, 0, 2] = -1.0, s - 1.0                      # x -> s - 1 - x
    out_px = torch.tensor([[s / 2, 0, (s - 1) / 2], [0, s / 2, (s - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    in_norm = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64)
    return (in_norm @ inv @ mirror @ out_px)[:, :2].to(torch.float32)


# ---------------------------------------------------------------------------------------- loader
def _resolve_default_device() -> torch.device:
    from ..train.distributed import get_dist_info, resolve_device
    return resolve_device("auto", get_dist_info().local_rank)


class DeviceAugmentLoader:
    """Iterates a DataLoader of {'raw', 'aug'} batches and yields {'views': [...]} batches on `device`.

    Sampler attributes and `len()` are those of the wrapped loader, so the Trainer's resume and
    `set_epoch` logic see no difference; the Trainer calls `set_device` with its own device.
    """

    def __init__(self, loader: Any, cfg: AugmentConfig, device: torch.device | str | None = None):
        self.loader, self.cfg = loader, cfg
        self.device = torch.device(device) if device is not None else None
        self.batch_sampler = getattr(loader, "batch_sampler", None)
        self.sampler = getattr(loader, "sampler", None)
        self.dataset = getattr(loader, "dataset", None)

    def set_device(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def _convert(self, obj: Any, device: torch.device) -> Any:
        if isinstance(obj, dict) and "raw" in obj and "aug" in obj:
            raw = obj["raw"].to(device, non_blocking=True)
            aug = obj["aug"]
            views = [augment_batch(raw, aug[:, j], self.cfg) for j in range(aug.shape[1])]
            rest = {k: v for k, v in obj.items() if k not in ("raw", "aug")}
            return {"views": views, **rest}
        if isinstance(obj, dict):
            return {k: self._convert(v, device) for k, v in obj.items()}
        return obj

    def __iter__(self) -> Iterator[Any]:
        device = self.device or _resolve_default_device()
        for batch in self.loader:
            yield self._convert(batch, device)
