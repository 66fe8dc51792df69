"""Transforms: shape/dtype/range, seeded determinism, weak != strong, no flip by default, speckle."""
import albumentations as A
import cv2
import numpy as np
import pytest

from usclf.data.transforms import AugmentConfig, Speckle, build_transform
from usclf.errors import UsclfError


def scan(size=48, seed=0):
    """A textured image with a black border, like a cropped ultrasound sector."""
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 220, (size, size), dtype=np.uint8)
    img[:, : size // 8] = 0
    return img


@pytest.mark.parametrize("kind", ["weak", "strong", "eval"])
def test_shape_dtype_range(kind):
    cfg = AugmentConfig(size=32)
    fn = build_transform(kind, cfg)
    lo, hi = (0 - cfg.mean) / cfg.std, (1 - cfg.mean) / cfg.std
    for seed in range(10):
        out = fn(scan(48, seed), seed)
        assert out.shape == (32, 32) and out.dtype == np.float32
        assert lo - 1e-5 <= out.min() and out.max() <= hi + 1e-5
    raw = build_transform(kind, AugmentConfig(size=32, mean=0.0, std=1.0))(scan(48), 3)
    assert 0 <= raw.min() and raw.max() <= 1


def test_seeded_determinism_and_variety():
    cfg = AugmentConfig(size=32)
    weak, strong = build_transform("weak", cfg), build_transform("strong", cfg)
    img = scan(48)
    assert np.array_equal(weak(img, 11), weak(img, 11))
    assert np.array_equal(strong(img, 11), strong(img, 11))
    # a fresh pipeline gives the same result: nothing depends on call history or process
    assert np.array_equal(build_transform("strong", cfg)(img, 11), strong(img, 11))
    assert not np.allclose(weak(img, 11), weak(img, 12))  # two weak draws differ
    assert not np.allclose(weak(img, 11), strong(img, 11))
    # strong perturbs more than weak on average (relative to the eval view)
    ev = build_transform("eval", cfg)(img)
    dw = np.mean([np.abs(weak(img, s) - ev).mean() for s in range(20)])
    ds = np.mean([np.abs(strong(img, s) - ev).mean() for s in range(20)])
    assert ds > dw


def test_eval_is_deterministic_resize_and_normalise():
    cfg = AugmentConfig(size=32, mean=0.5, std=0.25)
    ev = build_transform("eval", cfg)
    img = scan(64)
    expect = (cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA) / 255.0 - 0.5) / 0.25
    assert np.allclose(ev(img), expect, atol=1e-5)
    assert np.array_equal(ev(img, 1), ev(img, 2))


@pytest.mark.parametrize("kind", ["weak", "strong"])
def test_no_horizontal_flip_by_default(kind):
    img = np.full((48, 48), 30, np.uint8)
    img[:, :20] = 220  # bright left side
    fn = build_transform(kind, AugmentConfig(size=32, mean=0.0, std=1.0))
    for s in range(60):
        out = fn(img, s)
        assert out[:, :12].mean() > out[:, -12:].mean(), s
    flip = build_transform(kind, AugmentConfig(size=32, mean=0.0, std=1.0, hflip=True))
    flipped = sum(flip(img, s)[:, :12].mean() < flip(img, s)[:, -12:].mean() for s in range(60))
    assert 10 < flipped < 50


def test_speckle_is_multiplicative():
    img = np.full((64, 64), 100, np.uint8)
    img[:, :16] = 0
    out = A.Compose([Speckle(sigma=(0.2, 0.2), p=1.0)], seed=0)(image=img)["image"]
    assert (out[:, :16] == 0).all()  # black stays black
    body = out[:, 16:].astype(float)
    assert abs(body.mean() - 100) < 2 and abs(body.std() - 20) < 2


def test_bad_input_and_config_are_clear_errors():
    with pytest.raises(UsclfError, match="unknown transform kind"):
        build_transform("medium", AugmentConfig())
    with pytest.raises(UsclfError, match="H x W uint8"):
        build_transform("weak", AugmentConfig(size=32))(np.zeros((32, 32, 3), np.uint8), 0)
    with pytest.raises(UsclfError, match="needs a seed"):
        build_transform("weak", AugmentConfig(size=32))(scan(32), None)
    with pytest.raises(UsclfError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(UsclfError, match="strong_ops"):
        AugmentConfig(strong_ops=9)
    with pytest.raises(UsclfError, match="pair"):
        AugmentConfig(cutout=(0.2,))


def test_config_round_trips_through_yaml_overrides():
    from usclf.config import apply_overrides, from_dict, to_dict

    cfg = apply_overrides(from_dict(AugmentConfig, {"size": 64}), ["crop_scale=[0.6,0.9]", "hflip=true"])
    assert cfg.crop_scale == (0.6, 0.9) and cfg.hflip and cfg.size == 64
    assert from_dict(AugmentConfig, to_dict(cfg)) == cfg


def test_every_strong_op_runs_on_grayscale_and_changes_the_image():
    from usclf.data.transforms import _STRONG_OP_NAMES, _strong_ops

    img = scan(48)
    ops = _strong_ops()
    assert len(ops) == len(_STRONG_OP_NAMES)
    for name, op in zip(_STRONG_OP_NAMES, ops):
        out = A.Compose([op], seed=1)(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, img), name
