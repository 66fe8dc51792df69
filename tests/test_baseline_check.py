"""The baseline_check study on a tiny USPS-layout .npz: table layout, paper columns, Markdown report sections."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from usclf.studies import baseline_check as mod


def _tiny_usps(path, per_class: int = 20, seed: int = 0):
    """3 classes x `per_class` 16x16 images in [0, 1]: bright top half, left half or centre square, + noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 16, 16), np.float32)
    masks[0, :8, :], masks[1, :, :8], masks[2, 4:12, 4:12] = 1, 1, 1
    y = np.repeat(np.arange(3), per_class)
    x = np.clip(0.8 * masks[y] + 0.1 + 0.05 * rng.standard_normal((len(y), 16, 16)), 0, 1).astype(np.float32)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n = 3 * per_class * 3 // 4
    np.savez(path, x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])
    return path


TINY = ["dcec.filters=[4,8,8]", "dcec.batch_size=32", "dcec.cluster.max_steps=10",
        "dcec.cluster.update_interval=5", "dcec.cluster.batch_size=32", "features.n_init=3", "k=3"]


def test_usps_spec_tiny_run_table_and_report(tmp_path, mlflow_uri):
    data = _tiny_usps(tmp_path / "tiny_usps.npz")
    report = tmp_path / "docs" / "baselines.md"
    table = mod.run(tmp_path / "out", data, seeds=[0, 1], methods=["kmeans", "dcec"], dataset="usps",
                    epochs={"dcec": 2}, overrides=TINY, report=report, tracking_uri=mlflow_uri)

    assert list(table.index) == ["kmeans", "dcec"]
    for k in ("acc", "nmi", "ari"):
        for s in ("mean", "sd", "min", "max"):
            assert table[f"{k}_{s}"].notna().all(), f"{k}_{s}"
        assert (table[f"{k}_min"] <= table[f"{k}_mean"]).all() and (table[f"{k}_mean"] <= table[f"{k}_max"]).all()
    # the paper columns come from paper 004 Table 3, as fractions
    assert tuple(table.loc["kmeans", ["paper_004_acc", "paper_004_nmi", "paper_004_ari"]]) == (0.668, 0.626, 0.545)
    assert tuple(table.loc["dcec", ["paper_004_acc", "paper_004_nmi", "paper_004_ari"]]) == (0.790, 0.826, 0.764)
    # the three patterns are trivially separable: k-means on raw pixels finds them (fractions, not %)
    assert table.loc["kmeans", "acc_min"] > 0.95 and table.loc["kmeans", "nmi_min"] > 0.9
    assert 0 <= table.loc["dcec", "acc_mean"] <= 1
    assert table.loc["dcec", "training"].startswith("AE 2 ep, <= 10 steps")
    runs = pd.read_csv(tmp_path / "out" / "baseline_check_runs.csv")
    assert sorted(zip(runs["method"], runs["seed"])) == [("dcec", 0), ("dcec", 1), ("kmeans", 0), ("kmeans", 1)]
    # all 60 images of x_train + x_test were clustered (fit_splits ["all"])
    assert len(pd.read_csv(tmp_path / "out" / "seed0" / "kmeans" / "assignments.csv")) == 60

    text = report.read_text()
    assert text.count("<!-- baseline_check:usps -->") == 1 and text.count("<!-- /baseline_check:usps -->") == 1
    assert "pipelines/baseline_check.py --dataset usps" in text and "--epochs dcec=2" in text
    assert "dcec.cluster.max_steps=10" in text and "seeds: 0 1" in text and "60 images" in text
    rows = [line for line in text.splitlines() if line.startswith("| kmeans |") or line.startswith("| dcec |")]
    assert len(rows) == 2 and "| 0.668 |" in rows[0] and "| 0.790 |" in rows[1] and " ± " in rows[0]
    assert "AE 2 ep" in text and "official DCEC code" in text

    # a second dataset's section is added after the first, which is kept verbatim; a rerun replaces only its own
    usps_block = text[text.index("<!-- baseline_check:usps -->"):text.index("<!-- /baseline_check:usps -->")]
    meta = {"command": "python pipelines/baseline_check.py --dataset mnist-test", "seconds": 1.0, "seeds": [0],
            "n_images": 60, "k": 10, "fit_splits": ["test"]}
    mod.update_report(report, "mnist-test", mod.report_section("mnist-test", table, meta))
    mod.update_report(report, "mnist-test", mod.report_section("mnist-test", table, {**meta, "seconds": 7.0}))
    both = report.read_text()
    assert usps_block in both and both.index("baseline_check:usps") < both.index("baseline_check:mnist-test")
    assert both.count("<!-- baseline_check:mnist-test -->") == 1 and "wall time: 7 s" in both
    assert "| 0.542 |" in both                       # paper 004 Table 2 k-means ACC
    mod.update_report(report, "usps", "replaced")
    assert "replaced" in report.read_text() and usps_block not in report.read_text()
    assert "<!-- baseline_check:mnist-test -->" in report.read_text()


def test_cli_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "--dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--epochs", "dcec=0"])
    with pytest.raises(SystemExit):
        mod.main(["--dataset", "cifar"])
    assert mod.main(["--dataset", "usps", "--data", "/nonexistent/usps.npz"]) == 2
    assert "not found" in capsys.readouterr().err


def test_epochs_options_reach_the_method_configs(tmp_path):
    spec = mod.DATASETS["usps"]
    cfg = mod.method_config("idcec", 0, tmp_path, tmp_path, spec, ae_epochs=7, epochs={"dcec": 3},
                            overrides=["idcec.cnn.epochs=2"])
    assert (cfg.idcec.epochs, cfg.dcec.epochs, cfg.ae.epochs, cfg.idcec.cnn.epochs) == (7, 3, 7, 2)
    assert cfg.k == 10 and cfg.fit_splits == ["all"] and not cfg.figures
    assert mod.training_lengths(cfg) == "AE 7 ep, <= 4000 steps, CNN 2 ep x 1 rounds"
    assert mod.method_config("dec", 0, tmp_path, tmp_path, mod.DATASETS["mnist-test"]).fit_splits == ["test"]
    assert mod._section_epochs(["ae=5", "idcec=9"]) == {"ae": 5, "idcec": 9}
    assert mod._section_epochs(["foo=5"]) is None and mod._section_epochs(["dcec"]) is None
