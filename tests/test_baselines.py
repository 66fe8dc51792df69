"""`usclf baseline`: the registry, k-means on BreastMNIST against paper 000, DEC-family behaviour, and the
CLI end to end with its MLflow run and resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import shared_data, simulated_dataset
from usclf.baselines.config import AEConfig, BaselineConfig, FeatureConfig
from usclf.baselines.registry import Baseline, FitContext, get_baseline
from usclf.cli import main
from usclf.errors import UsclfError
from usclf.stages.baseline import baseline

BREASTMNIST = shared_data("breastmnist", "breastmnist.npz")
USPS = shared_data("usps", "usps.npz")
TINY_AE = ["ae.dims=[64,16,4]", "ae.epochs=30", "ae.batch_size=64", "dec.batch_size=64", "dec.max_steps=200",
           "figures=false", "progress=false"]


def blobs_npz(path, per_class=40, seed=0):
    """Three classes of 16x16 images: a bright 6x6 square in a class-specific corner, on noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, (r, q) in enumerate([(1, 1), (1, 9), (9, 5)]):
        for _ in range(per_class):
            im = rng.integers(0, 60, (16, 16))
            im[r:r + 6, q:q + 6] += 150 + rng.integers(0, 40)
            xs.append(im.clip(0, 255))
            ys.append(c)
    x, y = np.array(xs, np.uint8), np.array(ys)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    n = len(x)
    np.savez(path, x_train=x[: n // 2], y_train=y[: n // 2], x_val=x[n // 2: 3 * n // 4], y_val=y[n // 2: 3 * n // 4],
             x_test=x[3 * n // 4:], y_test=y[3 * n // 4:])
    return path


def test_registry_holds_exactly_the_documented_methods():
    from usclf.methods import BASELINE, help_text, method_class
    # the one method registry (configs/methods.yaml) holds every baseline, listed by `usclf baseline --help`
    assert len(BASELINE) == 16 and all(issubclass(method_class("baseline", m), Baseline) for m in BASELINE)
    assert all(method_class("baseline", m).name == m and get_baseline(BaselineConfig(method=m)).name == m
               for m in BASELINE)
    assert "idcec: IDCEC: DCEC with input noise" in help_text("baseline")
    with pytest.raises(UsclfError, match="unknown baseline 'deep-magic'; valid: ae-kmeans, cae-kmeans, cdec, cidec, dcec, dec, deepcluster"):
        get_baseline(BaselineConfig(method="deep-magic"))
    with pytest.raises(UsclfError, match="ae.epochs must be > 0"):
        get_baseline(BaselineConfig(method="idec", ae=AEConfig(epochs=0)))


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason=f"{BREASTMNIST} not present")
def test_kmeans_on_breastmnist_matches_paper_000(tmp_path, mlflow_uri):
    r = baseline(BaselineConfig(method="kmeans", data=str(BREASTMNIST), out=str(tmp_path / "km"), figures=False,
                                progress=False), tracking_uri=mlflow_uri)
    # paper 000 Table 2: k-means ACC 55.00 % on all 780 images (K = 2)
    assert r["metrics"]["all/acc"] == pytest.approx(0.55, abs=0.01)
    assert r["report"] is not None and len(r["rows"]) == 780


@pytest.mark.skipif(not USPS.is_file(), reason=f"{USPS} not present")
def test_kmeans_on_usps_matches_paper_004(tmp_path):
    r = baseline(BaselineConfig(method="kmeans", data=str(USPS), out=str(tmp_path / "km"), figures=False,
                                progress=False), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    # paper 004 Table 3: k-means ACC 0.668 on all 9298 USPS images (K = 10); float [0, 1] pixels in the npz
    assert r["metrics"]["all/acc"] == pytest.approx(0.668, abs=0.01)
    assert len(r["rows"]) == 9298 and r["report"] is None   # USPS has no validation split: no matched report


@pytest.mark.parametrize("method", ["kmeans", "pca-kmeans", "hog-kmeans", "lbp-kmeans"])
def test_fixed_feature_kmeans_separates_easy_classes(tmp_path, method):
    npz = blobs_npz(tmp_path / "blobs.npz")
    over = {"hog-kmeans": dict(features=FeatureConfig(hog_cell=4)),
            "lbp-kmeans": dict(features=FeatureConfig(lbp_cell=8))}.get(method, {})
    r = baseline(BaselineConfig(method=method, data=str(npz), out=str(tmp_path / method), figures=False,
                                progress=False, **over), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert r["metrics"]["all/acc"] >= (1.0 if method in ("kmeans", "pca-kmeans") else 0.8)


def _cli(tmp_path, method, data, *extra):
    return main(["baseline", "--method", method, "--data", str(data), "--out", str(tmp_path / method), "--quiet",
                 *TINY_AE, *extra])


def test_dec_self_training_sharpens_assignments(tmp_path, mlflow_uri):
    npz = blobs_npz(tmp_path / "blobs.npz")
    assert _cli(tmp_path, "ae-kmeans", npz) == 0
    ae = f"ae.weights={tmp_path / 'ae-kmeans' / 'autoencoder.pt'}"
    for m in ("dec", "idec", "idec-graph"):
        extra = [ae] if m != "idec-graph" else []
        # one target refresh (tol = 0.999 stops there) vs 200 steps of self-training (tol = 0 never stops)
        assert _cli(tmp_path / "short", m, npz, "dec.tol=0.999", *extra) == 0
        assert _cli(tmp_path, m, npz, "dec.tol=0", *extra) == 0
        short = pd.read_csv(tmp_path / "short" / m / "assignments.csv")["confidence"].mean()
        met = json.loads((tmp_path / m / "metrics.json").read_text())
        long = pd.read_csv(tmp_path / m / "assignments.csv")["confidence"].mean()
        # the target P ~ q^2 / f is sharper than Q, so training on it makes Q more confident (measured:
        # 0.34 -> 0.41-0.44 after 200 steps on these blobs)
        assert long > short + 0.03, (m, short, long)
        assert met["fit/steps"] == 200
        if m != "dec":
            # IDEC's reconstruction term keeps the (here perfect) k-means structure; plain DEC is free to
            # distort the embedding and merged two of the three blobs in 200 steps (ACC 0.67), which is
            # the weakness IDEC was proposed for, so DEC's ACC is not asserted
            assert met["all/acc"] == 1.0, (m, met)
    runs = MlflowClient(mlflow_uri).search_runs([MlflowClient(mlflow_uri).get_experiment_by_name(
        "usclf-baselines").experiment_id])
    got = {r.data.params["method"]: r for r in runs}
    assert set(got) == {"ae-kmeans", "dec", "idec", "idec-graph"}
    r = got["idec"]
    assert r.data.params["K"] == "3" and r.data.params["data_hash"]
    assert "train/kl" in r.data.metrics and "all/nmi" in r.data.metrics and "delta_label" in r.data.metrics


def _fit_dying_after(cfg, images, out, step):
    """In a forked child: fit, but exit (as a killed process: no clean-up) after clustering step `step`."""
    from usclf.train import loop
    train_step = loop.Trainer._train_step

    def step_then_die(self, batch, ctx):
        res = train_step(self, batch, ctx)
        if self.last_path.parent.name == "dec_checkpoints" and ctx.step + 1 == step:
            os._exit(17)
        return res

    loop.Trainer._train_step = step_then_die
    get_baseline(cfg).fit(images, FitContext(out, k=3, seed=1, progress=False))


def test_dec_killed_mid_clustering_resumes_with_its_target_to_the_uninterrupted_result(tmp_path):
    """DEC's target P (refreshed every 5 steps) is its step's state: the checkpoint at step 100 carries the one
    of step 100, and the resumed run ends where the uninterrupted one does."""
    import multiprocessing

    from usclf.atomic_io import load_checkpoint
    from usclf.config import apply_overrides
    images = np.load(blobs_npz(tmp_path / "blobs.npz"))["x_train"]
    cfg = apply_overrides(BaselineConfig(method="dec", progress=False),
                          [*TINY_AE[:4], "dec.max_steps=300", "dec.update_interval=5", "dec.tol=0"])
    whole = get_baseline(cfg).fit(images, FitContext(tmp_path / "a", k=3, seed=1, progress=False))
    child = multiprocessing.get_context("fork").Process(target=_fit_dying_after, args=(cfg, images, tmp_path / "b", 150))
    child.start()
    child.join()
    assert child.exitcode == 17
    ck = load_checkpoint(tmp_path / "b" / "dec_checkpoints" / "last.pt")  # checkpoints every 20 epochs = 100 steps
    assert ck["step"] == 100 and ck["method"]["target"].shape == (len(images), 3) and "target" not in ck["model"]
    resumed = get_baseline(cfg).fit(images, FitContext(tmp_path / "b", k=3, seed=1, progress=False, resume=True))
    assert resumed.info["steps"] == whole.info["steps"] == 300
    np.testing.assert_array_equal(resumed.P, whole.P)


def test_cli_on_ultrasound_dataset_and_resume(tmp_path, mlflow_uri):
    ds = simulated_dataset(tmp_path, exams=8, seed=2, fractions=(0.0, 0.5, 0.25, 0.25), size=32)
    assert _cli(tmp_path, "idec", ds, "figures=true") == 0
    out = tmp_path / "idec"
    a = pd.read_csv(out / "assignments.csv")
    man = pd.read_csv(ds / "manifest_split_seed0.csv")
    assert len(a) == len(man) and list(a.columns) == ["cache_row", "split", "cluster", "confidence"]
    assert (out / "report.csv").is_file() and (out / "figures" / "embedding.png").is_file()
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["all/acc"] <= 1.0
    # every patient/exam id stays out of the outputs
    text = "".join(p.read_text() for p in out.glob("*.csv"))
    assert not any(pid in text for pid in man["patient_id"].unique())
    # resume: the autoencoder and the finished clustering run are reused -> the same assignments
    ae_mtime = (out / "autoencoder.pt").stat().st_mtime_ns
    assert _cli(tmp_path, "idec", ds, "--resume") == 0
    assert (out / "autoencoder.pt").stat().st_mtime_ns == ae_mtime
    pd.testing.assert_frame_equal(pd.read_csv(out / "assignments.csv"), a)


def test_convolutional_baselines_on_ultrasound_dataset(tmp_path, mlflow_uri):
    ds = simulated_dataset(tmp_path, exams=8, seed=2, fractions=(0.0, 0.5, 0.25, 0.25), size=32)
    small = ["cae.filters=[8,8,8]", "cae.code=8", "cae.epochs=3", "cae.batch_size=32", "dec.max_steps=6"]
    assert _cli(tmp_path, "cae-kmeans", ds, *small) == 0
    cae = f"cae.weights={tmp_path / 'cae-kmeans' / 'autoencoder.pt'}"
    for m in ("cdec", "cidec"):
        assert _cli(tmp_path, m, ds, *small, cae) == 0
        met = json.loads((tmp_path / m / "metrics.json").read_text())
        assert 1 <= met["fit/steps"] <= 6 and 0.0 <= met["all/nmi"] <= 1.0
    # a dense autoencoder file does not fit the convolutional one: one-line error, no traceback
    assert _cli(tmp_path, "ae-kmeans", ds, "ae.epochs=1") == 0
    assert _cli(tmp_path / "x", "cdec", ds, *small, f"cae.weights={tmp_path / 'ae-kmeans' / 'autoencoder.pt'}") == 2


@pytest.mark.parametrize("args, msg", [
    (["--data", "nope.npz"], "data not found"),
    (["k=1"], "k must be >= 2"),
    (["ae.dims=[64,0]"], "ae.dims must be positive"),
    (["fit_splits=[nosuch]"], "no images in split"),
    (["--method", "cdec"], "need image sides that are multiples of 32"),
    (["--method", "deepcluster"], "clusters for only 15 images"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, mlflow_uri, args, msg):
    npz = blobs_npz(tmp_path / "blobs.npz", per_class=5)
    argv = ["baseline", "--out", str(tmp_path / "o"), "--quiet"] + ([] if "--method" in args else ["--method", "idec"])
    if "--data" not in args:
        argv += ["--data", str(npz)]
    assert main(argv + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "o" / "assignments.csv").exists()


def test_config_file_states_the_defaults():
    from pathlib import Path

    from usclf.config import load_config
    cfg = load_config(BaselineConfig, Path(__file__).resolve().parents[1] / "configs" / "baseline.yaml")
    assert cfg == BaselineConfig()      # the commented YAML documents exactly what the code uses


@pytest.mark.skipif(not BREASTMNIST.is_file(), reason=f"{BREASTMNIST} not present")
def test_breastmnist_check_pipeline_structure(tmp_path, mlflow_uri):
    from usclf.studies import baseline_check as mod

    rows = mod.run(tmp_path, BREASTMNIST, seeds=[0], methods=["kmeans", "ae-kmeans", "dec"], ae_epochs=2,
                   tracking_uri=mlflow_uri, results=tmp_path / "results.csv")
    assert [r["method"] for r in rows] == ["kmeans", "ae-kmeans", "dec"]
    assert float(rows[0]["acc"]) == pytest.approx(0.55, abs=0.01) and rows[0]["settings"] == ""
    assert len(mod.read_results(tmp_path / "results.csv")) == 3
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("usclf-baseline-check").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1
    children = client.search_runs([client.get_experiment_by_name("usclf-baseline-check").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert sorted(r.data.params["method"] for r in children) == ["ae-kmeans", "dec", "kmeans"]


def test_uniform_pseudo_label_batches_balance_classes_and_replay():
    import torch

    from usclf.baselines.deepcluster import UniformPseudoLabelBatches
    pseudo = torch.tensor([0] * 90 + [1] * 10)
    s = UniformPseudoLabelBatches(pseudo, batch_size=32, seed=3)
    s.set_epoch(0)
    first = [b for b in s]
    pos = np.array([p for b in first for p, _ in b])
    assert len(pos) == 100 and len(first) == len(s) == 4
    # DeepCluster's uniform sampling: the 10-image class gets about half the draws, not a tenth
    assert 40 <= (pseudo.numpy()[pos] == 1).sum() <= 51
    assert [b for b in s] == first                      # same epoch, same batches (resume)
    s.set_epoch(1)
    assert [b for b in s] != first


def test_deepcluster_end_to_end_and_resume(tmp_path, mlflow_uri):
    ds = simulated_dataset(tmp_path, exams=8, seed=2, fractions=(0.0, 0.5, 0.25, 0.25), size=32)
    opts = ["deepcluster.size=32", "deepcluster.epochs=2", "deepcluster.batch_size=32",
            "deepcluster.over_cluster=2", "figures=false"]
    assert main(["baseline", "--method", "deepcluster", "--data", str(ds), "--out", str(tmp_path / "dc"), "--quiet",
                 *opts]) == 0
    met = json.loads((tmp_path / "dc" / "metrics.json").read_text())
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("usclf-baselines").experiment_id])[0]
    k = int(run.data.params["K"])
    assert met["fit/clusters"] == 2 * k                   # over-clustering: 2 x K pseudo-classes
    assert "nmi_prev" in run.data.metrics and "train/ce" in run.data.metrics
    a = pd.read_csv(tmp_path / "dc" / "assignments.csv")
    assert a["cluster"].max() < 2 * k and len(a) == len(pd.read_csv(ds / "manifest_split_seed0.csv"))
    # a finished run resumed gives the same assignments
    assert main(["baseline", "--method", "deepcluster", "--data", str(ds), "--out", str(tmp_path / "dc"), "--quiet",
                 "--resume", *opts]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "dc" / "assignments.csv"), a)
