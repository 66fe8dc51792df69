"""The training loop: exact resume after a crash, NaN guard, early stopping / best weights, EMA, checkpoints."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from usclf.errors import UsclfError
from usclf.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from usclf.train.loop import EMA, OptimConfig, TrainConfig, Trainer, to_device

N_ROWS, BATCH = 20, 4  # 5 batches per epoch


class TinyData(Dataset):
    """Fixed images; an item is a row (plain loaders) or a (row, aug_seed) pair (seeded samplers)."""

    def __init__(self, n: int = N_ROWS):
        g = torch.Generator().manual_seed(123)
        self.x = torch.rand(n, 1, 8, 8, generator=g)
        self.y = (self.x.mean(dim=(1, 2, 3)) > 0.5).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, item):
        if isinstance(item, tuple):  # seeded augmentation: noise from the pair's seed only
            row, seed = item
            noise = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.05
            return {"x": self.x[row] + noise, "y": self.y[row]}
        return {"x": self.x[item], "y": self.y[item]}


class StateSampler:
    """Batch sampler with the data contract: set_epoch, state_dict/load_state_dict (skips consumed)."""

    def __init__(self, n: int, batch: int, seed: int = 0):
        self.n, self.batch, self.seed, self.epoch, self.skip = n, batch, seed, 0, 0

    def set_epoch(self, e):
        if e != self.epoch:
            self.skip = 0
        self.epoch = e

    def state_dict(self):
        return {"epoch": self.epoch, "skip": self.skip}

    def load_state_dict(self, s):
        self.epoch, self.skip = s["epoch"], s["skip"]

    def __len__(self):
        return self.n // self.batch

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        start, self.skip = self.skip, 0
        for b in range(start, len(self)):
            self.skip = b + 1
            rows = perm[b * self.batch:(b + 1) * self.batch]
            yield [(int(r), self.seed * 1000 + self.epoch * 100 + int(r)) for r in rows]
        self.skip = 0


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(4 * 8 * 8, 1))


def step_fn(model, batch, ctx):
    # torch RNG used inside the step (input jitter + dropout): resume must restore it exactly
    x = batch["x"] + 0.01 * torch.randn_like(batch["x"])
    logits = model(x).squeeze(1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["y"])
    return loss, {"acc": ((logits > 0).float() == batch["y"]).float().mean()}


class Crash(RuntimeError):
    pass


def crashing(at_step: int):
    def fn(model, batch, ctx):
        if ctx.step + 1 == at_step:
            raise Crash(f"killed at step {at_step}")
        return step_fn(model, batch, ctx)
    return fn


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, ckpt_every=2, log_every=1, seed=7, progress=False, device="cpu",
                optim=OptimConfig(lr=1e-2))
    base.update(kw)
    return TrainConfig(**base)


def hook_metric():
    """Validation hook whose metric depends on the weights (so best/counters are exercised)."""
    def hook(epoch, model):
        w = next(model.parameters())
        return {"metric": float(w.sum()), "val/extra": epoch * 1.0}
    return hook


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _seeded_loader():
    return DataLoader(TinyData(), batch_sampler=StateSampler(N_ROWS, BATCH, seed=3))


def _plain_loader():
    return DataLoader(TinyData(), batch_size=BATCH, shuffle=True)


@pytest.mark.parametrize("make_loader", [_seeded_loader, _plain_loader], ids=["state-sampler", "plain-shuffle"])
def test_crash_then_resume_gives_exactly_the_uninterrupted_weights(tmp_path, make_loader):
    c = cfg(ema=0.9, restore_best=False)
    ref_model = tiny_model()
    rt = Trainer(ref_model, c, step_fn, tmp_path / "ref", on_epoch_end=hook_metric())
    ref = rt.fit(make_loader())
    assert ref.steps == 15 and ref.epochs == 3

    crash_model = tiny_model()
    t = Trainer(crash_model, c, crashing(at_step=9), tmp_path / "run", on_epoch_end=hook_metric())
    with pytest.raises(Crash):
        t.fit(make_loader())
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] == 8 and ck["epoch"] == 1 and ck["batches_done"] == 3  # mid-epoch checkpoint

    resumed_model = tiny_model(seed=99)  # different init: everything must come from the checkpoint
    t2 = Trainer(resumed_model, c, step_fn, tmp_path / "run", on_epoch_end=hook_metric())
    res = t2.fit(make_loader(), resume=True)
    assert res.steps == 15 and res.epochs == 3
    assert_same(weights(resumed_model), weights(ref_model))
    assert_same(weights(t2.ema.module), weights(rt.ema.module))
    assert res.history == ref.history
    assert res.best_epoch == ref.best_epoch and res.best_metric == ref.best_metric
    assert_same(load_checkpoint(res.best_path)["model"], load_checkpoint(ref.best_path)["model"])


def test_resume_is_sensitive_to_the_seed(tmp_path):
    """Guard for the test above: the runs do depend on the RNG, so equality is not trivial."""
    a, b = tiny_model(), tiny_model()
    Trainer(a, cfg(epochs=1), step_fn, tmp_path / "a").fit(_seeded_loader())
    Trainer(b, cfg(epochs=1, seed=8), step_fn, tmp_path / "b").fit(_seeded_loader())
    assert not torch.equal(a[0].weight, b[0].weight)


def test_resume_with_real_sampler_and_prefetching_worker(tmp_path):
    """The usclf sampler with a worker process prefetching ahead: resume still exact."""
    from usclf.data.sampler import RandomBatchSampler

    def loader():
        return DataLoader(TinyData(), batch_sampler=RandomBatchSampler(N_ROWS, BATCH, seed=5),
                          num_workers=1, prefetch_factor=4)
    c = cfg(epochs=2, ckpt_every=3, restore_best=False)
    ref_model = tiny_model()
    Trainer(ref_model, c, step_fn, tmp_path / "ref").fit(loader())
    with pytest.raises(Crash):
        Trainer(tiny_model(), c, crashing(at_step=8), tmp_path / "run").fit(loader())
    assert load_checkpoint(tmp_path / "run" / "last.pt")["batches_done"] == 1
    resumed = tiny_model(seed=5)
    Trainer(resumed, c, step_fn, tmp_path / "run").fit(loader(), resume=True)
    assert_same(weights(resumed), weights(ref_model))


def test_nan_loss_stops_before_stepping_and_names_the_step(tmp_path):
    model = tiny_model()
    seen = {}

    def fn(m, batch, ctx):
        loss, metrics = step_fn(m, batch, ctx)
        if ctx.step + 1 == 7:
            seen["before"] = weights(model)
            return loss * float("nan"), metrics
        return loss, metrics
    with pytest.raises(UsclfError, match=r"non-finite loss at step 7 \(epoch 2, batch 2\)"):
        Trainer(model, cfg(), fn, tmp_path).fit(_seeded_loader())
    assert_same(weights(model), seen["before"])


def test_early_stopping_keeps_and_restores_best_weights(tmp_path):
    scores = [0.1, 0.5, 0.4, 0.3, 0.9, 0.95]
    snapshots = []

    def hook(epoch, model):
        snapshots.append(weights(model))
        return {"metric": scores[epoch]}
    model = tiny_model()
    res = Trainer(model, cfg(epochs=6, patience=2), step_fn, tmp_path, on_epoch_end=hook).fit(_seeded_loader())
    assert res.stopped_early and res.epochs == 4 and res.steps == 20
    assert res.best_epoch == 1 and res.best_metric == 0.5
    assert_same(load_checkpoint(res.best_path)["model"], snapshots[1])
    assert_same(weights(model), snapshots[1])  # restore_best
    assert [h["val/metric"] for h in res.history] == scores[:4]
    # resuming a finished run does nothing more
    res2 = Trainer(tiny_model(1), cfg(epochs=6, patience=2), step_fn, tmp_path, on_epoch_end=hook).fit(
        _seeded_loader(), resume=True)
    assert res2.steps == 20 and res2.stopped_early and len(snapshots) == 4


def test_hook_stop_and_explicit_is_best(tmp_path):
    def hook(epoch, model):
        return {"is_best": epoch == 0, "stop": epoch == 1}
    res = Trainer(tiny_model(), cfg(epochs=5), step_fn, tmp_path, on_epoch_end=hook).fit(_seeded_loader())
    assert res.epochs == 2 and res.stopped_early and res.best_epoch == 0 and res.best_metric is None


def test_max_steps_overrides_epochs_and_ends_with_a_partial_epoch(tmp_path):
    calls = []
    (tmp_path / "best.pt").write_bytes(b"stale best from an earlier run")
    res = Trainer(tiny_model(), cfg(epochs=1, max_steps=7), step_fn, tmp_path,
                  on_epoch_end=lambda e, m: calls.append(e)).fit(_seeded_loader())
    assert res.steps == 7 and res.epochs == 2 and calls == [0, 1]
    assert res.best_path is None and not (tmp_path / "best.pt").exists()
    assert load_checkpoint(res.last_path)["step"] == 7


def test_resume_with_another_architecture_is_refused(tmp_path):
    Trainer(tiny_model(), cfg(epochs=1), step_fn, tmp_path).fit(_seeded_loader())
    other = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.3), nn.Linear(8 * 8 * 8, 1))
    with pytest.raises(UsclfError, match="another architecture: .*shape mismatch"):
        Trainer(other, cfg(epochs=2), step_fn, tmp_path).fit(_seeded_loader(), resume=True)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UsclfError, match="no batches"):
        Trainer(tiny_model(), cfg(), step_fn, tmp_path).fit([])
    with pytest.raises(UsclfError, match="optim.name must be one of adam, adamw, sgd"):
        OptimConfig(name="lion")  # refused when the config is built, before anything is written
    with pytest.raises(UsclfError, match="train.optim.lr must be >= 0, got -0.1"):
        OptimConfig(lr=-0.1)
    with pytest.raises(UsclfError, match="train.epochs must be >= 1"):
        cfg(epochs=0)
    with pytest.raises(UsclfError, match="must return"):
        Trainer(tiny_model(), cfg(), lambda m, b, c: 1.0, tmp_path).fit(_seeded_loader())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsclfError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_ema_average_and_buffer_copy():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = EMA(model, decay=0.75)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, before + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert torch.equal(ema.module[1].running_mean, torch.tensor([3.0]))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_to_device_walks_nested_containers():
    batch = {"views": (torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)), "rows": [1, 2], "meta": "x"}
    out = to_device(batch, torch.device("cpu"))
    assert isinstance(out["views"], tuple) and torch.equal(out["views"][1], batch["views"][1])
    assert out["rows"] == [1, 2] and out["meta"] == "x"


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint(p, {"step": 1, "w": torch.ones(2)})
    with pytest.raises(Exception):
        save_checkpoint(p, {"step": 2, "bad": lambda: None})  # unpicklable: fails mid-write
    assert load_checkpoint(p)["step"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_rng_capture_restore_roundtrip_and_weights_only():
    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(1))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_cosine_schedule_is_fixmatchs_decay_by_hand():
    from usclf.train.optim import lr_at
    c = OptimConfig(name="sgd", lr=0.03, nesterov=True, schedule="cosine")
    assert lr_at(c, 0, 16) == pytest.approx(0.03)
    assert lr_at(c, 8, 16) == pytest.approx(0.03 * math.cos(7 * math.pi / 32))   # 0.03 * 0.77301
    assert lr_at(c, 16, 16) == pytest.approx(0.03 * 0.195090, abs=1e-7)         # cos(7 pi / 16): not 0
    assert lr_at(OptimConfig(lr=0.03), 8, 16) == 0.03                           # constant ignores the step


def test_cosine_schedule_drives_the_optimiser_and_resumes_exactly(tmp_path):
    c = cfg(optim=OptimConfig(name="sgd", lr=0.1, nesterov=True, weight_decay=5e-4, schedule="cosine"),
            restore_best=False)
    ref_model = tiny_model()
    rt = Trainer(ref_model, c, step_fn, tmp_path / "ref")
    ref = rt.fit(_seeded_loader())
    # the last step (14 of 15) ran at lr * cos(7 pi 14 / (16 * 15)); the epoch row logs it
    assert ref.history[-1]["lr"] == pytest.approx(0.1 * math.cos(7 * math.pi * 14 / 240))
    assert rt.optimizer.param_groups[0]["nesterov"] is True
    crash_model = tiny_model()
    with pytest.raises(Crash):
        Trainer(crash_model, c, crashing(at_step=9), tmp_path / "run").fit(_seeded_loader())
    resumed = tiny_model(seed=99)
    Trainer(resumed, c, step_fn, tmp_path / "run").fit(_seeded_loader(), resume=True)
    assert_same(weights(resumed), weights(ref_model))
    const = tiny_model()
    Trainer(const, cfg(optim=OptimConfig(name="sgd", lr=0.1, nesterov=True, weight_decay=5e-4),
                       restore_best=False), step_fn, tmp_path / "const").fit(_seeded_loader())
    assert not torch.equal(const[0].weight, ref_model[0].weight)  # the schedule changes the run


def test_nesterov_and_schedule_are_checked():
    with pytest.raises(UsclfError, match="nesterov needs train.optim.name=sgd"):
        OptimConfig(name="adam", nesterov=True)
    with pytest.raises(UsclfError, match="schedule"):
        OptimConfig(schedule="linear")


def test_ema_warmup_is_the_running_mean_until_it_reaches_the_decay():
    from usclf.train.optim import ema_decay

    assert ema_decay(0.999, 0, warmup=True) == 0.0          # first update: the weights themselves
    assert ema_decay(0.999, 9, warmup=True) == pytest.approx(0.9)
    assert ema_decay(0.999, 5000, warmup=True) == 0.999     # capped at the configured decay
    assert ema_decay(0.999, 0) == 0.999                     # off: the plain decay from step 0
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.999, warmup=True)
    seen = []
    for k in range(4):  # weights 1, 2, 3, 4 -> the EMA is their running mean: 1, 1.5, 2, 2.5
        model.weight.data.fill_(k + 1.0)
        ema.update(model, step=k)
        seen.append(ema.module.weight.item())
    assert seen == pytest.approx([1.0, 1.5, 2.0, 2.5])
