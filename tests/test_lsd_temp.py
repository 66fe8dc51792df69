"""lsd-temp (LSD with a temperature on the cluster-level cosine logits) on hand-checkable numbers, its option
through the registry and the config, and a real `usclf pretrain --method lsd-temp options.temperature=...` run."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import simulated_dataset
from usclf.cli import main
from usclf.config import load_config
from usclf.errors import UsclfError
from usclf.losses.dirichlet import lsd_loss
from usclf.methods import help_text, method_class
from usclf.methods.lsd_temperature import lsd_temp_loss, tempered_pui_cross_entropy
from usclf.models.modelfile import load_model_file
from usclf.stages.pretrain import PretrainConfig

D = torch.float64
X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)   # view ~: columns e1, e2; cluster sizes Z = (1/2, 1/2)
Y = torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=D)   # view ^: columns (1, 0) and (1, 2)/sqrt(5) once normalised


def test_tempered_cross_entropy_by_hand():
    # M = norm(X)^T norm(Y) = [[1, 1/sqrt5], [0, 2/sqrt5]]; row i: -log softmax(M_i / T)_i = log(1 + e^(-(M_ii - M_ij)/T))
    # T = 0.5: row 0 log(1 + e^(-1.105573)) = 0.285946, row 1 log(1 + e^(-1.788854)) = 0.154566, mean 0.220256
    ce = tempered_pui_cross_entropy(X, Y, temperature=0.5)
    assert ce.item() == pytest.approx(0.2202563442641606, abs=1e-12)
    assert ce.item() == pytest.approx((math.log1p(math.exp(-2 * (1 - 1 / math.sqrt(5))))
                                       + math.log1p(math.exp(-2 * 2 / math.sqrt(5)))) / 2, abs=1e-12)
    # separated clusters (M = I, K = 3): log(1 + (K - 1) e^(-1/T)); T = 1 cannot go below log(1 + 2/e) = 0.551445
    eye = torch.eye(3, dtype=D)
    assert tempered_pui_cross_entropy(eye, eye, 1.0).item() == pytest.approx(0.5514447139320511, abs=1e-12)
    assert tempered_pui_cross_entropy(eye, eye, 0.25).item() == pytest.approx(0.035976299748193157, abs=1e-12)


def test_total_adds_the_lsd_prior_and_temperature_one_is_lsd():
    # L_SD at Z = (1/2, 1/2), alpha = 1.01: -(0.01 / log 2) * 2 log(1/2) = 0.02; total = 0.220256 + 2 * 0.02
    total, parts = lsd_temp_loss(X, Y, lam=2.0, alpha=1.01, temperature=0.5)
    assert parts["sd"].item() == pytest.approx(0.02, abs=1e-12)
    assert total.item() == pytest.approx(0.2602563442641606, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    x = torch.softmax(torch.randn(16, 5, generator=g), 1).requires_grad_()
    y = torch.softmax(torch.randn(16, 5, generator=g), 1)
    ours, ref = lsd_temp_loss(x, y, lam=2.0, alpha=1.01, temperature=1.0), lsd_loss(x, y, lam=2.0, alpha=1.01)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1]["ce"], ref[1]["ce"])  # bit for bit


def test_the_option_is_validated_documented_and_the_method_is_a_trainer_step():
    cls = method_class("pretrain", "lsd-temp")
    m = cls({"temperature": 0.5, "lam": 1.0})
    assert m.options_dict() == {"lam": 1.0, "epsilon": 0.01, "temperature": 0.5}
    assert m.run_params() == {"lambda": 1.0, "alpha": 1.01, "temperature": 0.5}
    assert m.provenance() == {"lambda": 1.0, "epsilon": 0.01, "temperature": 0.5}
    loss, _ = m.loss(X, Y)
    assert loss.item() == pytest.approx(0.2202563442641606 + 0.02, abs=1e-12)
    assert m.state_dict() == {} and m.load_state_dict({}) is None  # stateless, still checkpointed (as {})
    with pytest.raises(UsclfError, match=r"options.temperature must be > 0, got 0.0"):
        cls({"temperature": 0})
    with pytest.raises(UsclfError, match="unknown config key 'options.temp'"):
        cls({"temp": 0.5})
    cfg = load_config(PretrainConfig, "configs/pretrain_lsd_demo.yaml", ["method=lsd-temp", "options.temperature=0.5"])
    assert cfg.options == {"lam": 2.0, "temperature": 0.5}
    assert "lsd-temp:" in help_text("pretrain") and "options.temperature:" in help_text("pretrain")


def test_pretrain_cli_trains_with_lsd_temp(tmp_path_factory, tmp_path, mlflow_uri, capsys):
    data = simulated_dataset(tmp_path_factory.mktemp("lsdtemp"), 8, seed=5, fractions=(0.5, 0.2, 0.15, 0.15))
    out = tmp_path / "pre"
    common = ["pretrain", "--method", "lsd-temp", "--data", str(data), "--out", str(out), "--quiet",
              "data.exams_per_batch=2", "data.max_images_per_exam=4", "augment.size=32", "train.progress=false",
              "evaluate_after=false"]
    assert main([*common, "options.temperature=0.5", "train.epochs=1"]) == 0
    model, meta = load_model_file(out / "model.pt")
    assert meta.method == "lsd-temp" and model.head.kind == "cluster" and meta.provenance["temperature"] == 0.5
    assert meta.provenance["lambda"] == 2.0 and meta.provenance["epsilon"] == 0.01
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["options"] == {"lam": 2.0, "epsilon": 0.01, "temperature": 0.5}  # every option, defaults filled
    ck = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["method"] == {}  # the method object is the step: the Trainer checkpointed its (empty) state
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("usclf-pretrain").experiment_id])
    p = run.data.params
    assert (p["method"], float(p["temperature"]), float(p["lambda"]), float(p["alpha"])) == ("lsd-temp", 0.5, 2.0, 1.01)
    assert client.get_metric_history(run.info.run_id, "train/ce")
    # a resume with another temperature is another run: refused in one line, config.yaml untouched
    capsys.readouterr()
    assert main([*common, "--resume", "options.temperature=0.25", "train.epochs=2"]) == 2
    assert "options.temperature was 0.5, now 0.25" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text()) == saved
