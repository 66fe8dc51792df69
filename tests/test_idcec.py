"""IDCEC (paper 004) and DCEC: the reliable-sample rule and the composite loss on hand numbers, both baselines
end to end on tiny easy images (fit, resume, the CLI with its MLflow run), and the CLI help."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from usclf.baselines.config import BaselineConfig
from usclf.baselines.registry import FitContext, get_baseline
from usclf.cli import main
from usclf.errors import UsclfError
from usclf.eval.clustering import hungarian_acc
from usclf.losses.idcec import idcec_loss, reliable_samples, weight_penalty

D = torch.float64


# ------------------------------------------------------------------ reliable samples (Eqs. 16-17)
def test_reliable_samples_hand_example():
    C = np.array([[2.0, 0.0], [0.0, 2.0]])
    F = np.array([
        [2.0, 0.5],    # nearest to centre 0 -> anchor 0 (no sample sits on the centre itself)
        [0.0, 2.0],    # anchor 1
        [3.0, 1.0],    # label 0 (d2 2 vs 10); cos to (2, .5) = 6.5 / (sqrt 10 sqrt 4.25) = 0.997 -> reliable
        [1.0, 1.5],    # label 1 (d2 3.25 vs 1.25); cos to (0, 2) = 1.5 / sqrt 3.25 = 0.832 -> reliable
        [1.0, -0.9],   # label 0; cos to the anchor (2, .5) = 1.55 / (sqrt 1.81 sqrt 4.25) = 0.559 -> not reliable,
                       # although its cosine with the centre direction (1, 0) is 0.743: the anchor counts
        [1.0, 1.0],    # tie (d2 2 and 2) -> cluster 0; cos to (2, .5) = 2.5 / (sqrt 2 sqrt 4.25) = 0.857
    ])                 # (had the tie gone to cluster 1: cos to (0, 2) = 0.707, reliable too, labelled 1)
    pseudo, anchors = reliable_samples(F, C, lam=0.7)
    assert anchors.tolist() == [0, 1]
    assert pseudo.tolist() == [0, 1, 0, 1, -1, 0]
    # lambda = 0.9 keeps only the anchors and sample 2
    assert reliable_samples(F, C, lam=0.9)[0].tolist() == [0, 1, 0, -1, -1, -1]
    # the k-means labels, when given, are the pseudo-labels (Sec. 3.3), not the nearest centre
    assert reliable_samples(F, C, 0.7, labels=np.array([0, 1, 0, 1, 0, 1]))[0].tolist() == [0, 1, 0, 1, -1, 1]


def test_reliable_samples_tie_and_threshold_is_inclusive():
    F = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    C = np.array([[1.0, 0.0], [0.0, 1.0]])
    # sample 2 is as near to both centres: the lowest cluster index; cos = 1/sqrt 2 exactly lambda: kept (>=)
    pseudo, anchors = reliable_samples(F, C, lam=math.sqrt(0.5))
    assert anchors.tolist() == [0, 1] and pseudo.tolist() == [0, 1, 0]
    assert reliable_samples(F, C, lam=0.71)[0].tolist() == [0, 1, -1]


def test_cluster_without_reliable_members_keeps_only_its_anchor():
    C = np.array([[1.0, 0.0], [0.0, 1.0]])
    F = np.array([[1.0, 0.0], [-0.3, 1.0], [0.9, 1.0], [2.0, 0.2]])
    # sample 2 is in cluster 1 (d2 0.81 vs 1.01) but cos to the anchor (-.3, 1) is 0.73 / 1.405 = 0.52
    pseudo, anchors = reliable_samples(F, C, lam=0.65)
    assert anchors.tolist() == [0, 1] and pseudo.tolist() == [0, 1, -1, 0]
    assert (pseudo == 1).sum() == 1


def test_shared_nearest_sample_gives_distinct_anchors():
    F = np.array([[1.0, 0.0], [1.5, 0.0], [4.0, 0.0]])
    C = np.array([[1.0, 0.0], [1.05, 0.0]])        # sample 0 is nearest to both centres
    pseudo, anchors = reliable_samples(F, C, lam=0.65)
    assert anchors.tolist() == [0, 1]              # cluster 1 takes the next nearest sample
    assert pseudo.tolist() == [0, 1, 1]


def test_reliable_samples_errors():
    F, C = np.ones((4, 2)), np.ones((2, 2))
    with pytest.raises(UsclfError, match="lambda must be in"):
        reliable_samples(F, C, lam=1.5)
    with pytest.raises(UsclfError, match="N x D and K x D"):
        reliable_samples(F, np.ones((2, 3)))
    with pytest.raises(UsclfError, match="at least as many samples"):
        reliable_samples(F[:1], C)


# ------------------------------------------------------------------ composite loss (Eqs. 1, 6, 7)
def test_idcec_loss_hand_value_and_weight_gradient():
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=D)
    xr = torch.tensor([[0.5, 0.5], [1.0, 1.0]], dtype=D)      # L_r = (.25 + .25 + 0 + 0) / 4 = 0.125
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    q = torch.full((2, 2), 0.5, dtype=D)                       # L_c = (log 2 + log 2) / 2 = log 2
    w = torch.tensor([[1.0, 2.0]], dtype=D, requires_grad=True)
    b = torch.tensor([3.0], dtype=D, requires_grad=True)       # L_w = (1 + 4 + 9) / 2 = 7
    loss, parts = idcec_loss(x, xr, p, q, [w, b], alpha=0.1, beta=1e-6)
    assert parts["rec"].item() == pytest.approx(0.125, abs=1e-12)
    assert parts["kl"].item() == pytest.approx(math.log(2), abs=1e-12)
    assert parts["l2"].item() == pytest.approx(7.0, abs=1e-12)
    assert loss.item() == pytest.approx(0.125 + 0.1 * math.log(2) + 7e-6, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(w.grad, 1e-6 * w.detach())      # d(beta/2 |w|^2)/dw = beta w: Adam's L2 term
    assert weight_penalty([torch.ones(3, dtype=D)]).item() == 1.5
    with pytest.raises(UsclfError, match="differ in shape"):
        idcec_loss(x, xr[:1], p, q, [w])


# ------------------------------------------------------------------ end to end
def easy_images(per_class=20, seed=0, size=16):
    """Three classes: a bright 6x6 square in a class-specific place on dim noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, (r, s) in enumerate([(1, 1), (1, size - 7), (size - 7, size // 2 - 3)]):
        for _ in range(per_class):
            im = rng.integers(0, 40, (size, size))
            im[r:r + 6, s:s + 6] += 180 + rng.integers(0, 30)
            xs.append(im.clip(0, 255))
            ys.append(c)
    order = rng.permutation(len(xs))
    return np.array(xs, np.uint8)[order], np.array(ys)[order]


TINY = dict(filters=[8, 16, 16], epochs=40, batch_size=32)
TINY_CLUSTER = dict(lr=1e-3, batch_size=32, update_interval=10, tol=0.0, max_steps=30)
TINY_CNN = dict(filters=[8, 8], dense=32, epochs=25, batch_size=32, lr=1e-3)


def _cfg(method, **extra):
    from usclf.baselines.config import CNNConfig, DCECConfig, DECConfig, IDCECConfig
    if method == "dcec":   # (extra: IDCEC-only settings)
        return BaselineConfig(method="dcec", dcec=DCECConfig(**TINY, cluster=DECConfig(**TINY_CLUSTER)))
    return BaselineConfig(method="idcec", idcec=IDCECConfig(**TINY, cluster=DECConfig(**TINY_CLUSTER),
                                                            cnn=CNNConfig(**TINY_CNN), **extra))


@pytest.mark.parametrize("method", ["dcec", "idcec"])
def test_fit_on_easy_clusters(tmp_path, method):
    from usclf.baselines.features import kmeans

    torch.set_num_threads(1)
    images, y = easy_images()
    # six ambiguous images halfway between a class-0 and a class-1 image: the ones IDCEC should not trust
    amb = ((images[y == 0][:6].astype(int) + images[y == 1][:6]) // 2).astype(np.uint8)
    X = np.concatenate([images, amb])
    fit = get_baseline(_cfg(method, lam=0.9)).fit(X, FitContext(tmp_path, k=3, seed=0, progress=False))
    assert fit.P.shape == (66, 3) and fit.features.shape == (66, 3)   # code = K
    np.testing.assert_allclose(fit.P.sum(1), 1.0, atol=1e-5)
    acc = hungarian_acc(y, fit.P[:60].argmax(1))
    assert acc >= 0.9, (method, acc)                                   # chance is about 0.4
    assert fit.P[:60].max(1).mean() > 0.8                              # confident (CNN on shuffled labels: 0.4)
    assert (tmp_path / "autoencoder.pt").is_file() and fit.info["steps"] == 30
    if method == "idcec":
        # the selection on the embedding keeps the 60 clean images and drops the 6 ambiguous ones (measured
        # cosines to the anchor: clean >= 0.999, ambiguous <= 0.88)
        labels, centres = kmeans(fit.features, 3, 0, 20)
        pseudo, _ = reliable_samples(fit.features, centres, 0.9, labels)
        assert (pseudo[:60] >= 0).all() and (pseudo[60:] == -1).all()
        assert fit.info["reliable"] == pytest.approx(60 / 66)
        assert fit.info["cnn_steps"] == 25 * math.ceil(60 / 32)
        assert (tmp_path / "idcec_cnn0_checkpoints" / "last.pt").is_file()


def test_idcec_two_rounds_resume_gives_the_same_assignments(tmp_path):
    torch.set_num_threads(1)
    images, _ = easy_images(per_class=10)
    cfg = _cfg("idcec", rounds=2)
    a = get_baseline(cfg).fit(images, FitContext(tmp_path, k=3, seed=1, progress=False))
    assert (tmp_path / "idcec_cnn1_checkpoints" / "last.pt").is_file() and a.info["rounds"] == 2
    assert a.features.shape == (30, 3)             # round 2 clustered round 1's CNN softmax outputs
    b = get_baseline(cfg).fit(images, FitContext(tmp_path, k=3, seed=1, progress=False, resume=True))
    np.testing.assert_allclose(b.P, a.P, atol=1e-6)


def test_cli_runs_idcec_scores_and_logs(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    images, y = easy_images(per_class=10)
    npz = tmp_path / "easy.npz"
    np.savez(npz, x_train=images, y_train=y)
    opts = ["idcec.filters=[8,16,16]", "idcec.epochs=20", "idcec.batch_size=32", "idcec.cluster.max_steps=10",
            "idcec.cluster.update_interval=5", "idcec.cnn.filters=[8]", "idcec.cnn.dense=16", "idcec.cnn.epochs=3",
            "figures=false"]
    assert main(["baseline", "--method", "idcec", "--data", str(npz), "--out", str(tmp_path / "o"), "--quiet",
                 *opts]) == 0
    met = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert 0 <= met["all/acc"] <= 1 and 0 < met["fit/reliable"] <= 1 and met["fit/clusters"] == 3
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("usclf-baselines").experiment_id])[0]
    assert run.data.params["method"] == "idcec" and "idcec/reliable" in run.data.metrics
    assert "train/l2" in run.data.metrics and "train/ce" in run.data.metrics


@pytest.mark.parametrize("args, msg", [
    (["--method", "idcec", "idcec.lam=1.5"], "idcec.lam must be in [0, 1]"),
    (["--method", "dcec", "dcec.filters=[8,8]"], "dcec.filters must be three positive"),
    (["--method", "dcec", "dcec.cluster.tol=1"], "dcec.cluster.tol must be in [0, 1)"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, mlflow_uri, args, msg):
    images, y = easy_images(per_class=3)
    np.savez(tmp_path / "e.npz", x_train=images, y_train=y)
    assert main(["baseline", "--data", str(tmp_path / "e.npz"), "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_small_images_are_refused():
    with pytest.raises(UsclfError, match="sides must be >= 8"):
        get_baseline(BaselineConfig(method="dcec")).check(np.zeros((10, 6, 6), np.uint8), 2)


def test_cli_help_lists_dcec_and_idcec(capsys):
    with pytest.raises(SystemExit) as e:
        main(["baseline", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "dcec: DCEC:" in out and "idcec: IDCEC:" in out
