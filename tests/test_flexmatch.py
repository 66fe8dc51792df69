"""FlexMatch (flexmatch-twohead) on hand-checkable numbers, its per-image state through a kill-and-resume,
and a real `usclf semisup` run with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow.tracking import MlflowClient

from conftest import simulated_dataset
from usclf import cli
from usclf.errors import UsclfError
from usclf.methods import method_class
from usclf.methods.flexmatch import flex_status, flex_thresholds, flexmatch_unlabeled
from usclf.methods.semisup_base import MethodSetup
from usclf.models.modelfile import load_model_file

# vocabulary [(1,0), (0,1), (1,1)] (seen 3x, 2x, 1x)
Y_LAB = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]])


def test_status_counts_images_and_warms_up():
    # pool of 6: two never confident, three last predicted class 0, one class 2
    selected = torch.tensor([-1, 0, 0, -1, 2, 0])
    prev = torch.zeros(3)
    # warm-up: denominator max(n_-1=2, n_0=3, n_1=0, n_2=1) = 3
    assert torch.allclose(flex_status(selected, 3, prev), torch.tensor([1.0, 0.0, 1 / 3]))
    # all six unselected: the status does not move (USB: max count == pool size)
    assert torch.equal(flex_status(torch.full((6,), -1), 3, torch.tensor([0.5, 0.2, 0.1])),
                       torch.tensor([0.5, 0.2, 0.1]))
    # warm-up makes the unselected bucket the denominator: 4 unselected, 2 of class 1
    assert torch.allclose(flex_status(torch.tensor([-1, -1, -1, -1, 1, 1]), 3, prev), torch.tensor([0, 0.5, 0]))
    # without warm-up the largest class is the denominator
    assert torch.allclose(flex_status(torch.tensor([-1, -1, -1, -1, 1, 1]), 3, prev, warmup=False),
                          torch.tensor([0, 1.0, 0]))


def test_thresholds_follow_the_mappings():
    status = torch.tensor([0.0, 0.5, 1.0])
    # convex tau * b / (2 - b): 0, 0.95 * 0.5 / 1.5, 0.95
    assert torch.allclose(flex_thresholds(status, 0.95), torch.tensor([0.0, 0.95 / 3, 0.95]))
    assert torch.allclose(flex_thresholds(status, 0.9, "linear"), torch.tensor([0.45, 0.675, 0.9]))
    with pytest.raises(UsclfError, match="mapping"):
        flex_thresholds(status, 0.9, "concave")


def test_one_step_masks_with_the_old_status_then_records_confident_images():
    # weak probabilities: image 0 -> class 0 at 0.96 (confident), image 1 -> class 1 at 0.5, image 2 -> class 0 at 0.4
    probs = torch.tensor([[0.96, 0.02, 0.02], [0.3, 0.5, 0.2], [0.4, 0.35, 0.25]])
    logits = probs.log()
    state = {"selected": torch.full((5,), -1), "status": torch.tensor([0.5, 1.0, 0.0])}
    idx = torch.tensor([3, 0, 4])
    loss, info, new = flexmatch_unlabeled(logits, logits.clone(), idx, state, tau=0.95)
    # thresholds before the batch (convex): class 0 0.95/3 = 0.3167, class 1 0.95; image 2 (0.4) passes, image 1 not
    assert info["mask"].tolist() == [True, False, True]
    assert info["pseudo"].tolist() == [0, 1, 0]
    # the loss: mean over all 3 rows of the masked CE = (-log 0.96 - log 0.4) / 3
    assert loss.item() == pytest.approx((-np.log(0.96) - np.log(0.4)) / 3, rel=1e-5)
    # only image 0 (pool position 3) was >= tau: it records class 0; status = n_c / max(n_-1 = 4, ...)
    assert new["selected"].tolist() == [-1, -1, -1, 0, -1]
    assert torch.allclose(new["status"], torch.tensor([0.25, 0.0, 0.0]))
    assert torch.equal(state["selected"], torch.full((5,), -1))  # pure: the old state is untouched


def test_the_method_keys_state_by_pool_position_and_survives_a_checkpoint():
    pool = np.array([10, 4, 7, 12])  # manifest rows of the unlabelled pool, not sorted
    setup = MethodSetup(classes=["a", "b"], y_labeled=Y_LAB, tau=0.95, unlabeled_rows=pool)
    m = method_class("semisup", "flexmatch-twohead")(setup, {"mapping": "convex"})
    assert m.state["selected"].tolist() == [-1] * 4 and len(m.state["status"]) == 3
    assert m.pool_index(torch.tensor([7, 10, 12])).tolist() == [2, 0, 3]
    with pytest.raises(UsclfError, match="outside"):
        m.pool_index(torch.tensor([5]))
    weak = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.1]])
    loss, info = m.unlabeled_loss((weak, None), (weak.clone(), None), m.pool_index(torch.tensor([12, 4])))
    assert m.state["selected"].tolist() == [-1, -1, -1, 0]  # row 12 (position 3) confident on label set (1,0)
    assert info["pseudo_ml"][0].tolist() == [1.0, 0.0] and "thr/mean" in info
    clone = method_class("semisup", "flexmatch-twohead")(setup, None)
    clone.load_state_dict(m.state_dict())
    assert torch.equal(clone.state["selected"], m.state["selected"])
    with pytest.raises(UsclfError, match="mapping"):
        method_class("semisup", "flexmatch-twohead")(setup, {"mapping": "nope"})
    with pytest.raises(UsclfError, match="pool"):
        method_class("semisup", "flexmatch-twohead")(MethodSetup(classes=["a", "b"], y_labeled=Y_LAB), None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """8 simulated exams, ingested at 32 px and split by patient through the CLI."""
    return simulated_dataset(tmp_path_factory.mktemp("flexmatch"), 8, seed=1, raw_size=64)


def test_semisup_cli_trains_with_flexmatch_and_checkpoints_its_state(dataset, mlflow_uri, tmp_path):
    out = tmp_path / "flex"
    assert cli.main(["semisup", "--config", "configs/semisup_demo.yaml", "--heads", "two", "--data", str(dataset),
                     "--out", str(out), "--quiet", "augment.size=32", "data.batch_size=4", "figures=false", "mu=2",
                     "method=flexmatch-twohead", "options.warmup=false", "tau=0.3", "eval_every=2",
                     "train.max_steps=4", "labeled_epochs=null"]) == 0
    model, meta = load_model_file(out / "model.pt")
    assert model.head.kind == "twohead" and meta.provenance["method_options"] == {"mapping": "convex", "warmup": False}
    run = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("usclf-semisup").experiment_id])[0]
    assert run.data.params["method"] == "flexmatch-twohead"
    (last,) = out.rglob("last.pt")
    state = torch.load(last, map_location="cpu", weights_only=False)["method"]["state"]
    assert len(state["selected"]) == int(run.data.params["n_unlabeled_images"])  # one entry per pool image
