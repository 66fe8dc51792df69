"""augment.backend=device (usclf/data/device_augment.py) against the cpu backend (cv2 + albumentations).

Per op: each device op equals albumentations' at fixed magnitudes (speckle: same noise statistics).
Whole pipelines on the same images: weak views match per image (same draws by construction, pixels
within interpolation rounding); strong views match in distribution (brightness, contrast, cutout, op
rates). Plus determinism per seed, independence from the batch a view lands in, and the loader wrapper.
"""
import albumentations as A
import numpy as np
import pytest
import torch

from usclf.data import device_augment as D
from usclf.data.transforms import AugmentConfig, Speckle, build_transform, weak_params
from usclf.errors import UsclfError


def _image(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127 + 100 * np.sin(xx / 7.0 + seed) * np.cos(yy / 11.0) + 30 * (xx > w * 0.7) + rng.normal(0, 12, (h, w))
    return img.clip(0, 255).astype(np.uint8)


def _device(img: np.ndarray, kind: str, cfg: AugmentConfig, seeds, kernels: str = "accel") -> np.ndarray:
    """The device backend on the CPU; kernels='accel' runs the accelerator's (grid_sample, hashed noise)."""
    p = torch.from_numpy(np.stack([D.view_params(kind, cfg, s, *img.shape) for s in seeds]))
    raw = torch.from_numpy(img)[None].expand(len(seeds), -1, -1).contiguous()
    return D.augment_batch(raw, p, cfg, kernels=kernels)[:, 0].numpy()


def _cpu(img: np.ndarray, kind: str, cfg: AugmentConfig, seeds) -> np.ndarray:
    tf = build_transform(kind, cfg)
    return np.stack([tf(img, s) for s in seeds])


def _levels(x: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Normalised output back to 0..255 grey levels."""
    return x * (255.0 * cfg.std) + 255.0 * cfg.mean


def test_backend_is_validated_and_defaults_to_cpu():
    assert AugmentConfig().backend == "cpu"
    with pytest.raises(UsclfError, match="augment.backend"):
        AugmentConfig(backend="gpu")


@pytest.mark.parametrize("hflip", [False, True])
def test_weak_views_match_the_cpu_backend_per_image(hflip):
    cfg = AugmentConfig(size=64, hflip=hflip)
    img, seeds = _image(), list(range(64))
    cpu = _cpu(img, "weak", cfg, seeds)
    d = np.abs(_levels(cpu, cfg) - _levels(_device(img, "weak", cfg, seeds, "accel"), cfg))
    # same crop/rotation/shift/jitter/flip draws; grid_sample differs from cv2's fixed-point interpolation
    assert d.max() <= 2.01 and d.mean() < 0.01
    # the cv2 warp (default on a CPU device) gives the cpu backend's pixels
    d = np.abs(_levels(cpu, cfg) - _levels(_device(img, "weak", cfg, seeds, "cpu"), cfg))
    assert d.max() < 1e-3


@pytest.mark.parametrize("name,values,op", [
    ("contrast", {"CONTRAST": 1.3}, A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=(0.3, 0.3), p=1)),
    ("contrast", {"CONTRAST": 0.65}, A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=(-0.35, -0.35),
                                                                 p=1)),
    ("gamma", {"GAMMA": 0.7}, A.RandomGamma(gamma_limit=(70, 70), p=1)),
    ("gamma", {"GAMMA": 1.5}, A.RandomGamma(gamma_limit=(150, 150), p=1)),
    ("blur", {"KSIZE": 3, "SIGMA": 0.8}, A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.8, 0.8), p=1)),
    ("blur", {"KSIZE": 5, "SIGMA": 1.4}, A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(1.4, 1.4), p=1)),
    ("sharpen", {"SHARP_A": 0.5, "SHARP_L": 0.9}, A.Sharpen(alpha=(0.5, 0.5), lightness=(0.9, 0.9), p=1)),
    ("posterize", {"BITS": 3}, A.Posterize(num_bits=(3, 3), p=1)),
    ("posterize", {"BITS": 6}, A.Posterize(num_bits=(6, 6), p=1)),
])
def test_each_strong_op_equals_albumentations_at_fixed_magnitude(name, values, op):
    img = _image(64, 64)
    p = torch.zeros(1, D.N_PARAMS, dtype=torch.float64)
    for k, v in values.items():
        p[0, getattr(D, k)] = v
    dev = D._strong_op(name, torch.from_numpy(img).float()[None, None], p.float(), torch.tensor([1]))[0, 0].numpy()
    ref = op(image=img)["image"].astype(np.float32)
    d = np.abs(dev - ref)
    assert d.max() <= 1.0 and d.mean() < 0.02  # float kernel vs cv2's fixed point: at most one grey level
    # the CPU kernels (uint8 tables and cv2 filters, as albumentations): the same pixels
    out = D.cv2_op(name, img.copy(), p[0].numpy())
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out, op(image=img)["image"].reshape(img.shape))


def test_speckle_has_the_cpu_noise_statistics():
    img = np.full((96, 96), 120, np.uint8)
    ref = Speckle(sigma=(0.2, 0.2), p=1)(image=img)["image"].astype(np.float32) / 120
    p = torch.zeros(1, D.N_PARAMS)
    p[0, D.SPECKLE] = 0.2
    p[0, D.NOISE_SEED] = 7
    accel = D._strong_op("speckle", torch.from_numpy(img).float()[None, None], p, torch.tensor([7]))[0, 0].numpy()
    for dev in (accel / 120, D.cv2_op("speckle", img, p[0].double().numpy()).astype(np.float32) / 120):
        assert abs(dev.mean() - ref.mean()) < 0.012 and abs(dev.std() - ref.std()) < 0.01
    z = D.hash_normal(torch.tensor([1, 2]), 50_000)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert abs(float(torch.corrcoef(z)[0, 1])) < 0.02  # different seeds, independent noise


@pytest.mark.parametrize("kernels", ["accel", "cpu"])
def test_strong_views_match_the_cpu_backend_in_distribution(kernels):
    cfg = AugmentConfig(size=48)
    seeds = list(range(300))
    for img in (_image(72, 72, 1), _image(72, 72, 2)):
        cpu = _levels(_cpu(img, "strong", cfg, seeds), cfg)
        dev = _levels(_device(img, "strong", cfg, seeds, kernels), cfg)
        stats = {  # per-view statistic -> (cpu, device) samples over seeds
            "brightness": (cpu.mean((1, 2)), dev.mean((1, 2))),
            "contrast": (cpu.std((1, 2)), dev.std((1, 2))),
            "zero fraction (cutout)": ((cpu < 0.5).mean((1, 2)), (dev < 0.5).mean((1, 2))),
        }
        for name, (a, b) in stats.items():
            se = np.sqrt(a.var() / len(a) + b.var() / len(b))
            assert abs(a.mean() - b.mean()) < 4 * se + 1e-3, (name, a.mean(), b.mean(), se)
            assert 0.8 < (b.std() + 1e-6) / (a.std() + 1e-6) < 1.25, (name, a.std(), b.std())


def test_strong_draws_follow_the_configured_ranges():
    cfg = AugmentConfig(size=64, hflip=True)
    p = np.stack([D.view_params("strong", cfg, s, 80, 80) for s in range(2000)])
    assert (p[:, D.OPS].sum(1) == cfg.strong_ops).all()
    assert np.allclose(p[:, D.OPS].mean(0), cfg.strong_ops / 6, atol=0.04)  # SomeOf: uniform choice
    assert abs(p[:, D.FLIP].mean() - 0.5) < 0.04
    scale = 64 * 64 / np.abs(p[:, 0] * p[:, 4] - p[:, 1] * p[:, 3]) / (80 * 80)  # crop area / image area
    assert scale.min() >= cfg.crop_scale[0] - 0.02 and scale.max() <= cfg.crop_scale[1] + 0.02
    # the cpu backend's crops (cv2 matrices of transforms.weak_params), from the same seeds
    cpu = [weak_params(80, 80, cfg, np.random.default_rng(s))[0] for s in range(2000)]
    cpu_scale = np.array([64 * 64 / abs(np.linalg.det(m[:, :2])) / (80 * 80) for m in cpu])
    assert np.allclose(scale, cpu_scale) and 0.85 < scale.mean() < 0.95 and 0.04 < scale.std() < 0.07
    side = (p[:, D.CUT][:, 2] - p[:, D.CUT][:, 0]) / 64
    assert side.min() >= 0.09 and side.max() <= 0.3 and abs(side.mean() - 0.19) < 0.01
    weak = np.stack([D.view_params("weak", cfg, s, 80, 80) for s in range(50)])
    assert not weak[:, D.OPS].any() and not weak[:, D.CUT].any()


@pytest.mark.parametrize("kernels", ["accel", "cpu"])
def test_device_views_are_deterministic_and_independent_of_the_batch(kernels):
    cfg = AugmentConfig(size=40)
    img = _image(60, 60)
    a = _device(img, "strong", cfg, [5, 6, 7, 8], kernels)
    b = _device(img, "strong", cfg, [5, 6, 7, 8], kernels)
    c = _device(img, "strong", cfg, [99, 7, 5], kernels)
    assert np.array_equal(a, b)
    assert np.array_equal(a[2], c[1]) and np.array_equal(a[0], c[2])
    assert not np.array_equal(a[0], a[1])


def test_dataset_and_loader_make_views_on_the_device(tmp_path):
    from conftest import simulated_dataset
    from usclf.data.cache import open_dataset
    from usclf.data.dataset import UltrasoundDataset
    from usclf.data.device_augment import DeviceAugmentLoader
    from usclf.data.sampler import ExamBatchSampler, make_loader
    ds = open_dataset(simulated_dataset(tmp_path, 4, seed=0))
    out = {}
    for backend in ("cpu", "device"):
        aug = AugmentConfig(size=32, backend=backend)
        data = UltrasoundDataset(ds, None, views=("weak", "strong"), aug=aug)
        loader = make_loader(data, ExamBatchSampler(data.exam_ids, 2, seed=3), 0)
        assert isinstance(loader, DeviceAugmentLoader) == (backend == "device")
        if backend == "device":
            assert len(loader) == len(loader.batch_sampler)
            loader.set_device("cpu")
        out[backend] = next(iter(loader))
    cpu, dev = out["cpu"], out["device"]
    assert [v.shape for v in cpu["views"]] == [v.shape for v in dev["views"]]
    assert torch.equal(cpu["row"], dev["row"]) and torch.equal(cpu["y"], dev["y"])
    lv = (cpu["views"][0] - dev["views"][0]).abs() * 255 * AugmentConfig().std
    assert float(lv.max()) <= 2.01  # weak: same draws, same pixels up to rounding
    assert all(v.dtype == torch.float32 for v in dev["views"])


@pytest.mark.slow  # ~30 s of CPU, but a stage run with MLflow: > 60 s on the loaded 2-core CI machine
def test_semisup_stage_trains_with_the_device_backend(tmp_path, mlflow_uri, monkeypatch):
    from conftest import simulated_dataset
    from usclf.cli import main
    from usclf.models.modelfile import load_model_file
    calls = []
    real = D.augment_batch
    monkeypatch.setattr(D, "augment_batch", lambda raw, *a, **k: calls.append(raw.shape) or real(raw, *a, **k))
    dataset = simulated_dataset(tmp_path / "d", 8, seed=2, fractions=(0.4, 0.3, 0.15, 0.15))
    out = tmp_path / "ss"
    assert main(["semisup", "--config", "configs/semisup_demo.yaml", "--heads", "two", "--data", str(dataset),
                 "--out", str(out), "--label-fraction", "1.0", "--quiet", "augment.size=32", "augment.backend=device",
                 "data.batch_size=4", "figures=false", "mu=2", "eval_every=2", "train.max_steps=2",
                 "model.init=random"]) == 0
    model, meta = load_model_file(out / "model.pt")
    assert meta.stage == "semisup"
    assert len(calls) >= 2 * 3  # 2 steps x (labelled weak + unlabelled weak + strong) views made by the backend


def test_device_loader_resumes_mid_epoch_and_ignores_workers(tmp_path):
    """The resume contract holds with the device backend: a sampler restored mid-epoch yields the
    uninterrupted run's remaining batches, views included; worker processes change nothing."""
    from conftest import simulated_dataset
    from usclf.data.cache import open_dataset
    from usclf.data.dataset import UltrasoundDataset
    from usclf.data.sampler import ExamBatchSampler, make_loader
    ds = open_dataset(simulated_dataset(tmp_path, 4, seed=1))
    data = UltrasoundDataset(ds, None, views=("weak", "strong"), aug=AugmentConfig(size=32, backend="device"))

    def batches(workers: int = 0, state: dict | None = None) -> list:
        sampler = ExamBatchSampler(data.exam_ids, 1, seed=4)
        sampler.set_epoch(1)
        if state:
            sampler.load_state_dict(state)
        loader = make_loader(data, sampler, workers)
        loader.set_device("cpu")
        return list(loader)

    def same(a: dict, b: dict) -> bool:
        return torch.equal(a["row"], b["row"]) and all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))

    full = batches()
    assert len(full) == 4
    resumed = batches(state={"epoch": 1, "consumed": 2, "seed": 4})
    assert len(resumed) == 2 and all(same(a, b) for a, b in zip(full[2:], resumed))
    assert all(same(a, b) for a, b in zip(full, batches(workers=1)))
