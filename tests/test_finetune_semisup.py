"""`usclf finetune` / `usclf semisup`: end to end through the CLI on 12 simulated exams at 32 px, the
FixMatch step's wiring, the combined labelled + unlabelled loader and its resume contract."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from conftest import simulated_dataset
from usclf.cli import build_parser, main
from usclf.data.cache import open_dataset
from usclf.data.dataset import UltrasoundDataset
from usclf.data.sampler import ExamBatchSampler, RandomBatchSampler
from usclf.data.splits import label_fraction_mask
from usclf.data.transforms import AugmentConfig
from usclf.data.unlabeled_loader import StepBatchSampler, fixmatch_loader, unlabeled_dataset, unlabeled_rows
from usclf.errors import UsclfError
from usclf.eval.clustering import combination_vocabulary
from usclf.eval.inference import infer
from usclf.eval.thresholds import best_f1_thresholds
from usclf.losses.fixmatch import fixmatch_onehead_unlabeled, fixmatch_twohead_unlabeled, twohead_labeled
from usclf.losses.supervised import multilabel_bce
from usclf.methods.fixmatch import FixMatchOneHead, FixMatchTwoHead
from usclf.methods.semisup_base import MethodSetup, combo_targets
from usclf.models.backbone import IMAGENET_ENV
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, load_model_file, save_model_file
from usclf.stages.scoring import sigmoid, val_weighted_f1
from usclf.train.loop import OptimConfig, TrainConfig, Trainer

SMALL = ["--quiet", "augment.size=32", "data.batch_size=4", "figures=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 simulated exams, ingested at 32 px and split by patient through the CLI."""
    return simulated_dataset(tmp_path_factory.mktemp("finetune_semisup"), 12, seed=1, raw_size=64)


def split_data(ds):
    return open_dataset(ds, ds / "manifest_split_seed0.csv")


def run_of(uri: str, experiment: str, stage: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.stage = '{stage}'")
    assert len(runs) == 1
    return client, runs[0]


def test_help_text_for_every_option():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("finetune", "semisup"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    opts = {a.dest for a in sub.choices["semisup"]._actions}
    assert {"method", "heads", "init", "label_fraction", "seed", "data", "out", "config", "resume"} <= opts
    method_help = next(a.help for a in sub.choices["semisup"]._actions if a.dest == "method")
    from usclf.methods import SEMISUP
    assert all(name in method_help for name in SEMISUP)  # --help lists every registered method


def test_finetune_cli_end_to_end(dataset, mlflow_uri, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--config", "configs/finetune_demo.yaml", "--data", str(dataset), "--out", str(out),
                 "--init", "random", "--label-fraction", "0.5", "--seed", "3", *SMALL, "train.epochs=3"]) == 0
    model, meta = load_model_file(out / "model.pt")
    data = split_data(dataset)
    assert model.head.kind == "multilabel" and meta.stage == "finetune" and meta.method == "supervised"
    assert meta.classes == data.classes
    # the label fraction: half of the train exams (seed 3), every image of them, nothing else
    kept = label_fraction_mask(data.manifest, 0.5, 3)
    assert meta.provenance["n_train_images"] == kept.sum() < (data.manifest["split"] == "train").sum()

    client, run = run_of(mlflow_uri, "usclf-finetune", "finetune")
    p = run.data.params
    assert (p["method"], p["init"], p["label_fraction"], p["seed"]) == ("supervised", "random", "0.5", "3")
    assert "model/model.pt" in [f.path for f in client.list_artifacts(run.info.run_id, "model")]
    val_history = [m.value for m in client.get_metric_history(run.info.run_id, "val/weighted_f1")]
    assert len(val_history) == 3

    # the saved weights are the best-validation ones, and its thresholds are those chosen on validation
    val = np.flatnonzero((data.manifest["split"] == "val").to_numpy())
    s_val = sigmoid(infer(model, data, val, AugmentConfig(size=32))["out"])
    y_val = data.labels(val).astype(int)
    assert val_weighted_f1(y_val, s_val) == pytest.approx(max(val_history), abs=1e-9)
    assert np.allclose(meta.thresholds, best_f1_thresholds(y_val, s_val))

    # `usclf evaluate` loads the model file and reproduces the test metric logged by finetune
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", str(dataset), "--out", str(ev),
                 "--quiet", "figures=false"]) == 0
    report = pd.read_csv(ev / "report.csv", index_col="class")
    assert report.loc["weighted avg", "f1"] == pytest.approx(run.data.metrics["test/weighted_f1"], abs=1e-9)


def test_semisup_two_head_cli_from_a_pretrain_model(dataset, mlflow_uri, tmp_path):
    data = split_data(dataset)
    pre = build_classifier("resnet18", "cluster", num_clusters=5)  # stands for an LSD pretrain model file
    save_model_file(tmp_path / "pre.pt", pre, ModelInfo(data.classes, "pretrain", "lsd"))
    out = tmp_path / "ss"
    assert main(["semisup", "--config", "configs/semisup_demo.yaml", "--heads", "two", "--data", str(dataset),
                 "--out", str(out), "--init", str(tmp_path / "pre.pt"), "--label-fraction", "0.5", "--seed", "3",
                 *SMALL, "mu=2", "eval_every=2", "train.max_steps=4", "train.log_every=1"]) == 0
    model, meta = load_model_file(out / "model.pt")
    assert model.head.kind == "twohead" and meta.stage == "semisup" and meta.provenance["head"] == "twohead"
    labelled = label_fraction_mask(data.manifest, 0.5, 3)
    vocab, _ = combination_vocabulary(data.labels(np.flatnonzero(labelled)).astype(int))
    assert meta.vocab == [list(v) for v in vocab] and model.head.num_combos == len(vocab)
    assert len(meta.thresholds) == len(data.classes)

    client, run = run_of(mlflow_uri, "usclf-semisup", "semisup")
    p = run.data.params
    assert (p["method"], p["head"], p["init_kind"], p["label_fraction"], p["seed"]) == \
        ("fixmatch-twohead", "twohead", "lsd", "0.5", "3")  # init kind read from the init model file
    assert p["init"] == str(tmp_path / "pre.pt")
    mask = client.get_metric_history(run.info.run_id, "step/mask_rate")
    assert len(mask) == 4 and all(0.0 <= m.value <= 1.0 for m in mask)
    assert len(client.get_metric_history(run.info.run_id, "val/weighted_f1")) == 2  # every eval_every steps
    assert "test/weighted_f1" in run.data.metrics

    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", str(dataset), "--out", str(ev),
                 "--quiet", "figures=false"]) == 0
    assert json.loads((ev / "metrics.json").read_text())["test/weighted_f1"] == \
        pytest.approx(run.data.metrics["test/weighted_f1"], abs=1e-9)


def test_finetune_selects_on_the_configured_dev_split(dataset, mlflow_uri, tmp_path, capsys):
    """dev_split / test_split are config: with them swapped, early stopping, the kept weights and the thresholds
    follow the split named as dev, and the report covers the other one."""
    out = tmp_path / "swap"
    assert main(["finetune", "--config", "configs/finetune_demo.yaml", "--data", str(dataset), "--out", str(out),
                 "--init", "random", "--seed", "3", *SMALL, "train.epochs=2", "dev_split=test",
                 "test_split=val"]) == 0
    model, meta = load_model_file(out / "model.pt")
    data = split_data(dataset)
    dev = np.flatnonzero((data.manifest["split"] == "test").to_numpy())
    s_dev = sigmoid(infer(model, data, dev, AugmentConfig(size=32))["out"])
    y_dev = data.labels(dev).astype(int)
    assert meta.provenance["best_val_f1"] == pytest.approx(val_weighted_f1(y_dev, s_dev), abs=1e-9)
    assert np.allclose(meta.thresholds, best_f1_thresholds(y_dev, s_dev))
    support = pd.read_csv(out / "eval" / "report.csv", index_col="class").drop(index="weighted avg", errors="ignore")
    val_y = data.labels(np.flatnonzero((data.manifest["split"] == "val").to_numpy())).astype(int)
    assert support.loc[data.classes, "support"].tolist() == val_y.sum(axis=0).tolist()
    capsys.readouterr()
    assert main(["finetune", "--data", str(dataset), "--out", str(tmp_path / "x"), *SMALL, "dev_split=test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dev_split and test_split must name two different splits" in err[0]


def test_semisup_refuses_evaluation_images_as_unlabelled(dataset, mlflow_uri, tmp_path, capsys):
    rc = main(["semisup", "--data", str(dataset), "--out", str(tmp_path / "x"), *SMALL,
               "unlabeled_splits=[unlabeled,val]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "must not include val" in err[0]


def test_finetune_imagenet_init_end_to_end(dataset, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing found by accident in real caches
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()  # RGB conv1, 1000-class fc
    torch.save(sd, tmp_path / "in1k.pth")
    monkeypatch.setenv(IMAGENET_ENV, str(tmp_path / "in1k.pth"))
    out = tmp_path / "ft"
    # lr 0: the trained model still holds the file's weights, so we can see they were the ones loaded
    assert main(["finetune", "--data", str(dataset), "--out", str(out), "--init", "imagenet", *SMALL,
                 "train.epochs=1", "train.optim.lr=0"]) == 0
    model, meta = load_model_file(out / "model.pt")
    assert torch.allclose(model.backbone.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.backbone.layer3[0].conv1.weight, sd["layer3.0.conv1.weight"])
    assert meta.provenance["init"] == "imagenet"


def test_finetune_imagenet_missing_is_one_line_error(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc = main(["finetune", "--data", str(dataset), "--out", str(tmp_path / "ft"), "--init", "imagenet", *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "ImageNet weights for resnet18 not found locally" in err[0] and IMAGENET_ENV in err[0]
    assert not (tmp_path / "ft" / "model.pt").exists()


# ------------------------------------------------------------------ the FixMatch step's wiring

class TinyNet(nn.Module):
    """Linear heads on flattened pixels (no BatchNorm: one pass equals separate passes); counts calls."""

    def __init__(self, heads: str, k: int = 3, c: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.calls = heads, 0
        self.combo, self.ml = nn.Linear(4, k), nn.Linear(4, c)

    def forward(self, x):
        self.calls += 1
        f = x.flatten(1) * 4.0
        return self.ml(f) if self.heads == "one" else (self.combo(f), self.ml(f))


def fixmatch_batch(nl=3, nu=4):
    g = torch.Generator().manual_seed(1)
    lab = {"views": [torch.randn(nl, 1, 2, 2, generator=g)], "y": torch.tensor([[1., 0.], [0., 1.], [1., 1.]])}
    weak, strong = torch.randn(nu, 1, 2, 2, generator=g), torch.randn(nu, 1, 2, 2, generator=g)
    return {"labeled": lab, "unlabeled": {"views": [weak, strong], "y": -torch.ones(nu, 2)}}


def make_step(heads, tau, lambda_u, y_labeled=None):
    """The registered reference FixMatch method; its vocabulary comes from `y_labeled`."""
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 0]]) if y_labeled is None else y_labeled
    cls = FixMatchOneHead if heads == "one" else FixMatchTwoHead
    return cls(MethodSetup(classes=[f"c{i}" for i in range(y.shape[1])], y_labeled=y, tau=tau, lambda_u=lambda_u))


def test_combo_targets_map_label_sets_and_ignore_rare_ones():
    vocab = torch.tensor([[1., 0.], [0., 1.]])
    y = torch.tensor([[0., 1.], [1., 1.], [1., 0.], [0., 0.]])
    assert combo_targets(y, vocab).tolist() == [1, -100, 0, -100]


@pytest.mark.parametrize("heads", ["one", "two"])
def test_step_is_one_forward_pass_with_the_right_slices(heads):
    net, batch = TinyNet(heads), fixmatch_batch()
    step = make_step(heads, tau=0.5, lambda_u=2.0)  # vocabulary [1, 0], [0, 1], [0, 0] (by count)
    assert step.vocab == ([(1, 0), (0, 1), (0, 0)] if heads == "two" else [])
    loss, m = step(net, batch, None)
    assert net.calls == 1
    x, y = batch["labeled"]["views"][0], batch["labeled"]["y"]
    weak, strong = batch["unlabeled"]["views"]
    with torch.no_grad():
        if heads == "one":
            l_sup = multilabel_bce(net(x), y)
            l_u, info = fixmatch_onehead_unlabeled(net(weak), net(strong), tau=0.5)
        else:
            target = torch.tensor([0, 1, -100])  # [1, 1] is not in the vocabulary
            l_sup, _ = twohead_labeled(net(x)[0], net(x)[1], target, y)
            l_u, info = fixmatch_twohead_unlabeled(net(weak)[0], net(strong)[0], tau=0.5)
    assert loss.item() == pytest.approx(l_sup.item() + 2.0 * l_u.item(), abs=1e-6)
    assert m["mask_rate"].item() == info["mask_rate"].item()
    assert m["loss_u"].item() == pytest.approx(l_u.item(), abs=1e-6)
    assert l_u.item() > 0  # the check above is not vacuous: some unlabelled rows pass tau = 0.5
    # swapping weak and strong changes the loss (pseudo-labels must come from the weak view)
    swapped = {**batch, "unlabeled": {**batch["unlabeled"], "views": [strong, weak]}}
    assert make_step(heads, 0.5, 2.0)(net, swapped, None)[0].item() != pytest.approx(loss.item())


# ------------------------------------------------------------------ the combined loader

def make_streams(seed=0):
    lab = RandomBatchSampler(10, 4, seed=seed, drop_last=True)                       # 2 batches / epoch
    exams = np.repeat([f"e{i}" for i in range(5)], [3, 1, 2, 4, 2])
    unl = ExamBatchSampler(exams, exams_per_batch=2, max_images_per_exam=3, seed=seed + 1)  # 3 batches / epoch
    return lab, unl, exams


def test_step_sampler_is_a_function_of_the_global_step():
    lab, unl, exams = make_streams()
    s = StepBatchSampler(lab, unl, steps_per_epoch=4)
    epochs = []
    for e in range(3):
        s.set_epoch(e)
        epochs.append(list(s))
    flat = [b for ep in epochs for b in ep]
    assert [len(ep) for ep in epochs] == [4, 4, 4]
    ref_lab, ref_unl, _ = make_streams()
    for step, batch in enumerate(flat):
        ref_lab.set_epoch(step // 2)
        ref_unl.set_epoch(step // 3)
        want_l, want_u = list(ref_lab)[step % 2], list(ref_unl)[step % 3]
        assert [(r, sd) for src, r, sd in batch if src == 0] == want_l
        got_u = [(r, sd) for src, r, sd in batch if src == 1]
        assert got_u == want_u
        rows = [r for r, _ in got_u]
        for e in set(exams[rows]):  # whole exams, capped at 3 images
            assert sum(exams[rows] == e) == min(3, int((exams == e).sum()))
    # resume after 3 steps of epoch 1, from a fresh sampler: the same remaining batches
    fresh = StepBatchSampler(*make_streams()[:2], steps_per_epoch=4)
    fresh.set_epoch(1)
    fresh.load_state_dict(s.state_dict(consumed=3) | {"epoch": 1})
    assert list(fresh) == epochs[1][3:]
    for lab in (RandomBatchSampler(10, 5, drop_last=True), RandomBatchSampler(10, 3, drop_last=True)):
        with pytest.raises(UsclfError, match="does not fit"):  # another batch size: refuse, don't skew
            StepBatchSampler(lab, make_streams()[1], 4).load_state_dict(s.state_dict(consumed=1))


def test_unlabelled_pool_never_shows_labels_or_evaluation_images(dataset):
    data = split_data(dataset)
    labelled = np.flatnonzero(label_fraction_mask(data.manifest, 0.5, 0))
    rows = unlabeled_rows(data, ["unlabeled"], labelled, train_rest=True)
    split = data.manifest["split"].to_numpy()
    assert set(split[rows]) == {"unlabeled", "train"} and not set(rows) & set(labelled)
    assert len(rows) + len(labelled) == int(np.isin(split, ["unlabeled", "train"]).sum())
    assert set(split[unlabeled_rows(data, ["unlabeled"], labelled, train_rest=False)]) == {"unlabeled"}
    aug = AugmentConfig(size=32)
    loader = fixmatch_loader(UltrasoundDataset(data, labelled, ("weak",), aug), unlabeled_dataset(data, rows, aug),
                             batch_size=4, unlabeled_exams=2, max_images_per_exam=None, steps_per_epoch=3)
    for batch in loader:
        assert torch.all(batch["unlabeled"]["y"] == -1)  # train-rest labels are blanked
        assert set(batch["unlabeled"]["row"].tolist()) <= set(rows)
        assert len(batch["unlabeled"]["views"]) == 2 and batch["labeled"]["y"].min() >= 0


def test_semisup_training_resumes_after_a_kill_to_the_same_weights(dataset, tmp_path):
    """Kill mid-epoch (step 5 of 6, eval_every 3): resuming gives the uninterrupted run's weights."""
    data = split_data(dataset)
    labelled = np.flatnonzero(label_fraction_mask(data.manifest, 1.0, 0))
    aug = AugmentConfig(size=32)
    rows = unlabeled_rows(data, ["unlabeled"], labelled, train_rest=False)

    def run(out, kill_at=None, resume=False):
        loader = fixmatch_loader(UltrasoundDataset(data, labelled, ("weak",), aug),
                                 unlabeled_dataset(data, rows, aug), batch_size=4, unlabeled_exams=1,
                                 max_images_per_exam=4, steps_per_epoch=3, seed=5)
        torch.manual_seed(0)
        model = build_classifier("resnet18", "multilabel", num_classes=len(data.classes))
        step = make_step("one", tau=0.6, lambda_u=1.0, y_labeled=data.labels(labelled).astype(int))

        def killable(m, batch, ctx):
            if ctx.step == kill_at:
                raise KeyboardInterrupt
            return step(m, batch, ctx)
        cfg = TrainConfig(max_steps=6, ckpt_every=1, progress=False, optim=OptimConfig(lr=1e-3), seed=2)
        Trainer(model, cfg, killable, out).fit(loader, resume=resume)
        return model.state_dict()

    full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_at=4)
    resumed = run(tmp_path / "b", resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
