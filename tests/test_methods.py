"""The training-method registry and each registered method on hand-checkable numbers; method state that
survives kill-and-resume; the EMA teacher; pseudo-label diagnostics; the schedule rule; collapse warning."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import simulated_dataset
from usclf.config import load_config
from usclf.data.cache import open_dataset
from usclf.data.dataset import UltrasoundDataset
from usclf.data.splits import label_fraction_mask
from usclf.data.transforms import AugmentConfig
from usclf.data.unlabeled_loader import fixmatch_loader, unlabeled_dataset, unlabeled_rows
from usclf.errors import UsclfError
from usclf.losses.dirichlet import lsd_loss
from usclf.eval.pseudo_diagnostics import PseudoLabelDiagnostics
from usclf.methods import FINETUNE, PRETRAIN, SEMISUP, method_class
from usclf.methods.clustering import collapse_warning, effective_clusters
from usclf.methods.semisup_base import MethodSetup
from usclf.models.heads import build_classifier
from usclf.stages.semisup import SemisupConfig, schedule
from usclf.train.loop import OptimConfig, StepContext, TrainConfig, Trainer

# label sets seen 3x, 2x, 1x -> vocabulary [(1,0), (0,1), (1,1)], labelled distribution [1/2, 1/3, 1/6]
Y_LAB = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]])
LOG_P = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]))  # weak softmax probs 0.6 / 0.3 / 0.1


def build(name, tau=0.95, options=None, truth=None, teacher="student"):
    setup = MethodSetup(classes=["a", "b"], y_labeled=Y_LAB, tau=tau, lambda_u=1.0, teacher=teacher, truth=truth)
    return method_class("semisup", name)(setup, options)


def test_registry_names_resolve_and_unknown_is_one_line():
    for name in SEMISUP:
        assert method_class("semisup", name).name == name
    for name in PRETRAIN:
        assert method_class("pretrain", name).name == name
    assert list(FINETUNE) == ["supervised"] and method_class("finetune", "supervised").name == "supervised"
    with pytest.raises(UsclfError, match="unknown semisup method 'nope'; valid: fixmatch-onehead"):
        method_class("semisup", "nope")


def test_every_method_is_on_the_protocol_and_documents_exactly_its_options():
    from dataclasses import fields

    from usclf.methods import option_help
    from usclf.methods.base import Method
    for kind, table in (("semisup", SEMISUP), ("pretrain", PRETRAIN), ("finetune", FINETUNE)):
        for name in table:
            cls = method_class(kind, name)
            assert issubclass(cls, Method) and callable(getattr(cls, "state_dict"))
            assert set(option_help(kind, name)) == {f.name for f in fields(cls.Options)}, f"{kind}.{name}"
            assert all(option_help(kind, name).values())


def test_clustering_methods_take_their_options_and_refuse_the_old_keys():
    from usclf.stages.pretrain import PretrainConfig
    lsd = method_class("pretrain", "lsd")({"lam": 0.5, "epsilon": 0.2})
    assert (lsd.run_params(), lsd.provenance()) == ({"lambda": 0.5, "alpha": 1.2}, {"lambda": 0.5, "epsilon": 0.2})
    assert method_class("pretrain", "pica")(None).run_params() == {"lambda": 2.0}
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert torch.equal(lsd.loss(x, x.flip(0))[0], lsd_loss(x, x.flip(0), lam=0.5, alpha=1.2)[0])
    assert lsd.state_dict() == {}
    with pytest.raises(UsclfError, match="options.epsilon must be > 0"):
        method_class("pretrain", "lsd")({"epsilon": 0})
    with pytest.raises(UsclfError, match="unknown config key 'options.epsilon'; valid keys: options.lam"):
        method_class("pretrain", "pica")({"epsilon": 0.01})
    with pytest.raises(UsclfError, match=r"config key 'lam' is now 'options.lam': write options.lam=5 "):
        load_config(PretrainConfig, None, ["lam=5"])
    assert load_config(PretrainConfig, "configs/pretrain_lsd.yaml", ["method=pica"]).options == {"lam": 2.0}


def test_options_are_validated_and_reach_the_method():
    cfg = load_config(SemisupConfig, "configs/semisup_demo.yaml", ["method=freematch-twohead", "options.momentum=0.5"])
    assert cfg.options == {"momentum": 0.5}
    assert build("freematch-twohead", options=cfg.options).options.momentum == 0.5
    with pytest.raises(UsclfError, match="unknown config key 'options.bogus'"):
        build("freematch-twohead", options={"bogus": 1})
    with pytest.raises(UsclfError, match="momentum"):
        build("freematch-twohead", options={"momentum": 1.5})


def test_freematch_threshold_after_one_known_step():
    m = build("freematch-twohead", options={"momentum": 0.5})
    assert m.vocab == [(1, 0), (0, 1), (1, 1)]
    loss, info = m.unlabeled_loss((LOG_P, None), (LOG_P.clone(), None))
    # time_p = 0.5 * 1/3 + 0.5 * 0.6 = 0.4667; p_model = 0.5/3 + 0.5 * [0.6, 0.3, 0.1] = [0.4667, 0.3167, 0.2167]
    assert m.state["time_p"].item() == pytest.approx(0.5 / 3 + 0.3, abs=1e-6)
    assert m.state["p_model"].tolist() == pytest.approx([0.5 / 3 + 0.3, 0.5 / 3 + 0.15, 0.5 / 3 + 0.05], abs=1e-6)
    # the argmax (set 0) has the largest p_model, so its threshold is time_p = 0.4667 <= 0.6: every row kept
    assert info["mask"].all() and info["mask_rate"].item() == 1.0
    assert loss.item() == pytest.approx(-math.log(0.6), abs=1e-5)  # CE of the strong view (= weak here)
    assert info["pseudo_ml"].tolist() == [[1.0, 0.0], [1.0, 0.0]]  # set 0 read back as its label set


def test_twohead_ml_trains_the_sigmoid_head_on_accepted_label_sets():
    m = build("fixmatch-twohead-ml", tau=0.5)
    ml_strong = torch.zeros(2, 2, requires_grad=True)
    loss, info = m.unlabeled_loss((LOG_P, None), (LOG_P.clone(), ml_strong))
    assert info["mask"].all() and info["pseudo_ml"].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    # CE -log 0.6 on the combination head + BCE log 2 of sigmoid(0) against the label set (1, 0)
    assert loss.item() == pytest.approx(-math.log(0.6) + math.log(2), abs=1e-5)
    loss.backward()
    assert ml_strong.grad[:, 0].lt(0).all() and ml_strong.grad[:, 1].gt(0).all()  # towards (1, 0)
    ref = build("fixmatch-twohead", tau=0.5).unlabeled_loss((LOG_P, None), (LOG_P.clone(), None))[0]
    assert ref.item() == pytest.approx(-math.log(0.6), abs=1e-5)  # the reference leaves the sigmoid head alone


def test_distribution_alignment_pulls_towards_the_labelled_distribution():
    m = build("fixmatch-da-twohead", tau=0.5, options={"momentum": 0.0})
    assert m.state["p_target"].tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 6])
    loss, info = m.unlabeled_loss((LOG_P, None), (LOG_P.clone(), None))
    # momentum 0: p_model = [0.6, 0.3, 0.1]; aligned = p * target / p_model, normalised = target: max 0.5 >= tau
    assert m.state["p_model"].tolist() == pytest.approx([0.6, 0.3, 0.1], abs=1e-6)
    assert info["mask"].all() and info["pseudo"].tolist() == [0, 0]
    assert build("fixmatch-da-twohead", tau=0.51, options={"momentum": 0.0}).unlabeled_loss(
        (LOG_P, None), (LOG_P, None))[1]["mask_rate"].item() == 0.0


def test_cap_keeps_each_class_at_its_labelled_share():
    m = build("cap-onehead", options={"pool": 8})
    assert m.state["prior"].tolist() == pytest.approx([4 / 6, 3 / 6])
    logits = torch.logit(torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.1, 0.2], [0.7, 0.9], [0.6, 0.4]]))
    loss, info = m.unlabeled_loss(logits, logits.clone())
    assert m.state["pool"].shape == (6, 2)
    pos = (info["pseudo_ml"] * info["mask_ml"]).sum(0) / 6
    # the positive share per class never exceeds the labelled share (4/6, 3/6) and is not zero
    assert (pos <= torch.tensor([4 / 6, 3 / 6]) + 1e-6).all() and (pos > 0).all()
    loss2, _ = m.unlabeled_loss(logits, logits.clone())
    assert m.state["pool"].shape == (8, 2)  # FIFO capped at options.pool


class TinyNet(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.combo, self.ml = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        f = x.flatten(1)
        return self.combo(f), self.ml(f)


def test_ema_teacher_makes_the_pseudo_labels():
    g = torch.Generator().manual_seed(0)
    batch = {"labeled": {"views": [torch.randn(6, 1, 2, 2, generator=g)], "y": torch.tensor(Y_LAB, dtype=torch.float)},
             "unlabeled": {"views": [torch.randn(5, 1, 2, 2, generator=g), torch.randn(5, 1, 2, 2, generator=g)]}}
    student, teacher = TinyNet(0), TinyNet(1)
    ctx = StepContext(0, 0, 0, torch.device("cpu"), ema=teacher)
    m_t = build("fixmatch-twohead", tau=0.0, teacher="ema")
    m_s = build("fixmatch-twohead", tau=0.0)
    _, info_t = m_t.unlabeled_loss(teacher(batch["unlabeled"]["views"][0]), student(batch["unlabeled"]["views"][1]))
    loss_t, _ = m_t(student, batch, ctx)
    loss_s, _ = m_s(student, batch, ctx)
    assert loss_t.item() != pytest.approx(loss_s.item())
    sup, _ = m_t.labeled_loss(tuple(o[:6] for o in student(batch["labeled"]["views"][0])), batch["labeled"]["y"])
    u, _ = m_t.unlabeled_loss(teacher(batch["unlabeled"]["views"][0]), student(batch["unlabeled"]["views"][1]))
    assert loss_t.item() == pytest.approx(sup.item() + u.item(), abs=1e-5)
    with pytest.raises(UsclfError, match="teacher=ema needs train.ema"):
        m_t(student, batch, StepContext(0, 0, 0, torch.device("cpu")))


class BNNet(TinyNet):
    def __init__(self, seed):
        super().__init__(seed)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return super().forward(self.bn(x.flatten(1)))


def test_separate_forward_keeps_the_labelled_loss_off_the_unlabelled_batch_statistics():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor(Y_LAB, dtype=torch.float)
    x = torch.randn(6, 1, 2, 2, generator=g)

    def batch(shift):  # unlabelled images whose statistics differ from the labelled ones by `shift`
        weak, strong = (torch.randn(5, 1, 2, 2, generator=g) + shift for _ in range(2))
        return {"labeled": {"views": [x], "y": y}, "unlabeled": {"views": [weak, strong]}}

    def method(forward):
        setup = MethodSetup(classes=["a", "b"], y_labeled=Y_LAB, tau=0.0, forward=forward)
        return method_class("semisup", "fixmatch-twohead")(setup)

    joint, separate = method("joint"), method("separate")
    near, far = batch(0.0), batch(5.0)
    # without BatchNorm the two are the same step
    net = TinyNet(0)
    assert joint(net, near, None)[0].item() == pytest.approx(separate(net, near, None)[0].item(), abs=1e-6)
    # with BatchNorm: separate normalises the labelled images by their own statistics only
    sup = {}
    for name, m in (("joint", joint), ("separate", separate)):
        for b in (near, far):
            bn = BNNet(0)
            _, metrics = m(bn, b, None)
            sup.setdefault(name, []).append(float(metrics["loss_sup"]))
        assert int(bn.bn.num_batches_tracked) == (1 if name == "joint" else 3)
    alone, _ = joint.labeled_loss(BNNet(0)(x), y)
    assert sup["separate"] == pytest.approx([alone.item()] * 2, abs=1e-6)
    assert abs(sup["joint"][0] - sup["joint"][1]) > 1e-3       # joint: the unlabelled images move it
    with pytest.raises(UsclfError, match="forward must be joint or separate"):
        method("both")


def test_diagnostics_count_precision_and_recall_against_truth():
    truth = np.array([[1, 0], [1, 1], [0, 1], [np.nan, np.nan]], dtype=float)
    d = PseudoLabelDiagnostics(["a", "b"], truth)
    pseudo = torch.tensor([[1., 0.], [1., 0.], [1., 1.], [1., 1.]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [False, False]])
    out = d.update(0, pseudo, mask, torch.tensor([0, 1, 2, 3]))
    # accepted positives: a in rows 0,1,2 (2 right), b in row 2 (right) -> precision 3/4; truth positives 4 -> recall 3/4
    assert out["pl/precision"] == pytest.approx(0.75) and out["pl/recall"] == pytest.approx(0.75)
    tab = d.table(window=1).set_index("class")
    assert tab.loc["a", "precision"] == pytest.approx(2 / 3) and tab.loc["b", "recall"] == pytest.approx(1 / 2)
    d2 = PseudoLabelDiagnostics(["a", "b"], None)
    d2.load_state_dict(d.state_dict())
    assert d2.steps == [0] and (d2.counts[0] == d.counts[0]).all()


def test_labeled_epochs_schedule_rule():
    cfg = load_config(SemisupConfig, "configs/semisup_demo.yaml", ["labeled_epochs=40", "train.max_steps=100"])
    assert schedule(cfg, 35).max_steps == 175  # ceil(40 * 35 / 8) > the floor of 100
    assert schedule(cfg, 10).max_steps == 100  # ceil(40 * 10 / 8) = 50 < 100: the floor holds
    assert schedule(load_config(SemisupConfig, "configs/semisup_demo.yaml"), 35).max_steps == 200


def test_collapse_warning():
    one = torch.zeros(6, 3)
    one[:, 0] = 1
    assert effective_clusters(one).item() == pytest.approx(1.0)
    assert effective_clusters(torch.eye(3).repeat(2, 1)).item() == pytest.approx(3.0, abs=1e-5)
    assert "collapsed" in collapse_warning([{"train/effective_clusters": 1.1}], k=3)
    assert collapse_warning([{"train/effective_clusters": 2.5}], k=3) is None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return simulated_dataset(tmp_path_factory.mktemp("methods"), 10, seed=2, raw_size=48)


def test_method_state_survives_kill_and_resume(dataset, tmp_path):
    data = open_dataset(dataset, dataset / "manifest_split_seed0.csv")
    labelled = np.flatnonzero(label_fraction_mask(data.manifest, 1.0, 0))
    aug = AugmentConfig(size=32)
    rows = unlabeled_rows(data, ["unlabeled"], labelled, train_rest=False)

    def run(out, kill_at=None, resume=False):
        loader = fixmatch_loader(UltrasoundDataset(data, labelled, ("weak",), aug), unlabeled_dataset(data, rows, aug),
                                 batch_size=4, unlabeled_exams=1, max_images_per_exam=4, steps_per_epoch=3, seed=5)
        setup = MethodSetup(classes=list(data.classes), y_labeled=data.labels(labelled).astype(int), tau=0.5)
        method = method_class("semisup", "freematch-twohead")(setup, {"momentum": 0.9})
        torch.manual_seed(0)
        model = build_classifier("resnet18", "twohead", **method.model_sizes())
        inner = method.__call__

        def killable(m, batch, ctx):
            if ctx.step == kill_at:
                raise KeyboardInterrupt
            return inner(m, batch, ctx)
        # a step_fn that dies at `kill_at` but checkpoints the method's state like the method itself
        step = type("Killable", (), {"__call__": lambda self, *a: killable(*a),
                                     "state_dict": method.state_dict, "load_state_dict": method.load_state_dict})()
        cfg = TrainConfig(max_steps=6, ckpt_every=1, progress=False, optim=OptimConfig(lr=1e-3), seed=2)
        Trainer(model, cfg, step, out).fit(loader, resume=resume)
        return model.state_dict(), method

    full, m_full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_at=4)
    resumed, m_res = run(tmp_path / "b", resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert torch.equal(m_full.state["time_p"], m_res.state["time_p"])
    assert torch.equal(m_full.state["p_model"], m_res.state["p_model"])
    assert m_full.diag.steps == m_res.diag.steps == list(range(6))
