"""The baseline_check study on a tiny USPS-layout .npz: cells land in the results file as they finish, a rerun
skips them, a killed run keeps them, and the report is rebuilt from the results file alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from usclf.studies import baseline_check as mod
from usclf.studies import baseline_specs as specs
from usclf.studies.baseline_report import README_MARKS


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


TINY = ["ae.dims=[8,8,3]", "ae.epochs=2", "ae.batch_size=32", "dec.max_steps=10", "dec.batch_size=32",
        "features.n_init=2", "k=3"]


@pytest.fixture
def spy(monkeypatch):
    """Every baseline() call of the study as (method, seed, resume, ae.weights); raises where told to."""
    calls, fail = [], set()

    def wrapped(cfg, **kw):
        calls.append((cfg.method, cfg.seed, kw.get("resume"), cfg.ae.weights))
        if (cfg.method, cfg.seed) in fail:
            Path(cfg.out).mkdir(parents=True)
            raise KeyboardInterrupt   # a run killed while in this cell
        return real(cfg, **kw)

    real = mod.baseline
    monkeypatch.setattr(mod, "baseline", wrapped)
    return calls, fail


def test_cells_land_as_they_finish_a_rerun_skips_them_and_report_reads_the_csv(tmp_path, mlflow_uri, spy, capsys):
    calls, _ = spy
    data, res, md = _tiny_usps(tmp_path / "tiny_usps.npz"), tmp_path / "results.csv", tmp_path / "docs" / "b.md"
    kw = dict(data=data, seeds=[0, 1], methods=["kmeans", "ae-kmeans", "dec"], dataset="usps", overrides=TINY,
              results=res, tracking_uri=mlflow_uri)
    new = mod.run(tmp_path / "out", **kw)
    rows = pd.read_csv(res, keep_default_na=False)
    assert list(rows.columns) == mod.COLUMNS and len(new) == len(rows) == 6
    assert sorted(zip(rows["method"], rows["seed"])) == sorted((m, s) for m in kw["methods"] for s in (0, 1))
    assert not any(r[2] for r in calls)                       # new cells: nothing to resume
    ae_settings = rows.loc[rows.method == "ae-kmeans", "settings"].iloc[0]
    assert [c[3] for c in calls if c[0] == "dec"] == [
        str(mod.cell_dir(tmp_path / "out", ae_settings, seed, "ae-kmeans") / "autoencoder.pt") for seed in (0, 1)]
    km = rows[rows.method == "kmeans"]
    assert (km["acc"] > 0.95).all() and (rows[["acc", "nmi", "ari"]] <= 1).all().all()
    assert km["settings"].iloc[0] == f"features.n_init=2 k=3 data={data}"        # only what k-means uses
    assert "dec.max_steps=10" in rows.loc[rows.method == "dec", "settings"].iloc[0]
    assert "ae.epochs=2" in rows.loc[rows.method == "dec", "settings"].iloc[0]
    assert rows["command"].str.startswith("python pipelines/baseline_check.py --dataset usps").all()
    assert rows["machine"].str.contains("torch CPU").all() and (rows["commit"] != "").all()
    # a tiny k-means cell can round to 0.0 CPU seconds; the trained ones cannot
    assert (rows["cpu_s"] >= 0).all() and (rows.loc[rows.method != "kmeans", "cpu_s"] > 0).all()
    assert (rows["resumed"] == "").all()
    assert ((rows["top_cluster"] >= 0.33) & (rows["top_cluster"] <= 1)).all() and (rows["wall_s"] >= 0).all()

    before, n_calls = res.read_bytes(), len(calls)
    capsys.readouterr()
    assert mod.run(tmp_path / "out", **kw) == []
    assert res.read_bytes() == before and len(calls) == n_calls    # skipped: no run, no new or lost row
    assert capsys.readouterr().out.count("baseline_check: skip usps") == 6
    # other settings are other cells
    mod.run(tmp_path / "out", **{**kw, "seeds": [0], "methods": ["kmeans"], "overrides": TINY + ["features.n_init=3"]})
    assert len(pd.read_csv(res)) == 7

    readme = Path(__file__).resolve().parents[1] / "README.md"
    before_readme = readme.read_bytes()
    assert mod.main(["--report", str(md), "--results", str(res)]) == 0
    assert readme.read_bytes() == before_readme     # another results file never rewrites the project's README
    text = md.read_text()
    assert "## USPS (usps): paper 004 Table 3" in text and "## BreastMNIST (breastmnist)" in text
    kmeans_rows = [line for line in text.splitlines() if line.startswith("| kmeans |")]
    assert len(kmeans_rows) == 2 and "| 0 1 |" in kmeans_rows[0] and "| 0.668 |" in kmeans_rows[0]
    assert " ± " in kmeans_rows[0] and "features.n_init=3" in kmeans_rows[1]
    assert "| dec |" in text and "| 0.733 |" in text and "AE 2 ep, <= 10 steps" in text
    assert "not run: kmeans, ae-kmeans, dec, idec, dcec, idcec (seeds 0 1 2): `python pipelines/baseline_check.py " \
           "--dataset usps --methods kmeans ae-kmeans dec idec dcec idcec --seeds 0 1 2`" in text
    assert rows["command"].iloc[0] in text and rows["machine"].iloc[0] in text
    # from the CSV alone: the run folders are not needed, and the notes block survives a rebuild
    shutil.rmtree(tmp_path / "out")
    md.write_text(text.replace("(measured reasons for the gaps go here)", "a measured reason"))
    assert mod.main(["--report", str(md), "--results", str(res)]) == 0
    assert md.read_text() == text.replace("(measured reasons for the gaps go here)", "a measured reason")


def test_a_killed_run_keeps_finished_cells_and_the_rerun_does_only_the_rest(tmp_path, mlflow_uri, spy, capsys):
    calls, fail = spy
    data, res = _tiny_usps(tmp_path / "tiny_usps.npz"), tmp_path / "results.csv"
    kw = dict(data=data, seeds=[0, 1], methods=["kmeans", "ae-kmeans", "dec"], dataset="usps", overrides=TINY,
              results=res, tracking_uri=mlflow_uri)
    fail.add(("dec", 0))
    with pytest.raises(KeyboardInterrupt):
        mod.run(tmp_path / "out", **kw)
    kept = pd.read_csv(res, keep_default_na=False)
    assert sorted(zip(kept["method"], kept["seed"])) == [("ae-kmeans", 0), ("kmeans", 0)]
    assert [p.name for p in res.parent.iterdir() if p.name.startswith(".")] == []   # no temp file left
    assert res.stat().st_mode & 0o777 == 0o644

    fail.clear()
    calls.clear()
    mod.run(tmp_path / "out", **kw)
    assert [c[:3] for c in calls] == [("dec", 0, True), ("kmeans", 1, False), ("ae-kmeans", 1, False),
                                      ("dec", 1, False)]          # the killed cell resumes from its checkpoints
    rows = pd.read_csv(res, keep_default_na=False)
    assert rows.loc[(rows.method == "dec") & (rows.seed == 0), "resumed"].tolist() == ["yes"]
    assert len(rows) == 6 and rows.iloc[:2].equals(kept) and not rows.duplicated(["method", "seed"]).any()

    # DEC alone on a new seed: its autoencoder's cell runs first and lands too; the DEC cell pretrains nothing
    calls.clear()
    mod.run(tmp_path / "out", **{**kw, "seeds": [2], "methods": ["dec"]})
    assert [c[:2] for c in calls] == [("ae-kmeans", 2), ("dec", 2)]
    assert "that cell first" in capsys.readouterr().out
    assert sorted(pd.read_csv(res).query("seed == 2")["method"]) == ["ae-kmeans", "dec"]
    dec_dir = next((tmp_path / "out").glob("s-*/seed2/dec"))
    assert not (dec_dir / "ae_checkpoints").exists() and (dec_dir / "dec_checkpoints" / "last.pt").is_file()


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


def test_settings_reach_the_method_configs_and_name_only_what_a_method_uses(tmp_path):
    spec = specs.DATASETS["usps"]
    items = specs.setting_items(ae_epochs=7, epochs={"dcec": 3}, overrides=["idcec.cnn.epochs=2", "ae.epochs=5"])
    cfg = specs.method_config("idcec", 0, tmp_path, tmp_path, spec, [f"{k}={v}" for k, v in items.items()])
    assert (cfg.idcec.epochs, cfg.dcec.epochs, cfg.ae.epochs, cfg.idcec.cnn.epochs) == (7, 3, 5, 2)
    assert cfg.k == 10 and cfg.fit_splits == ["all"] and not cfg.figures
    assert specs.training_lengths(cfg) == "AE 7 ep, <= 4000 steps, CNN 2 ep x 1 rounds"
    assert specs.method_config("dec", 0, tmp_path, tmp_path, specs.DATASETS["mnist-test"]).fit_splits == ["test"]
    assert specs.cell_settings("idcec", items) == "idcec.cnn.epochs=2 idcec.epochs=7"
    assert specs.cell_settings("kmeans", items) == "" and specs.cell_settings("kmeans", {"k": "3"}, "x.npz") == \
        "k=3 data=x.npz"
    assert specs.cell_settings("idec", {**items, "dec.tol": "0", "graph.k": "2"}) == "ae.epochs=5 dec.tol=0"
    assert "graph.k=2" in specs.cell_settings("idec-graph", {"graph.k": "2"})
    assert specs.config_items("ae.epochs=5 data=x.npz") == ["ae.epochs=5"]
    assert mod._section_epochs(["ae=5", "idcec=9"]) == {"ae": 5, "idcec": 9}
    assert mod._section_epochs(["foo=5"]) is None and mod._section_epochs(["dcec"]) is None


def test_abdomen_us_layout_is_ingested_once_and_scored_with_its_matched_test_f1(tmp_path, mlflow_uri, monkeypatch):
    """Issue 27 item 4's shape on a simulated exam folder: k-means and LSD (as a baseline) cluster every frame;
    each row carries NMI on the labelled frames and the matched weighted F1 of the test split; the report has
    the F1 column; a rerun reuses the ingested data and skips the cells."""
    from usclf.data.simulate import SimulateConfig, simulate

    simulate(tmp_path / "exams", SimulateConfig(exams=12, size=48, seed=3), progress=False)
    monkeypatch.setitem(specs.DATASETS, "abdomen_us", specs.DATASETS["abdomen_us"]._replace(ingest={
        "size": 32, "split": {"unlabeled": 4, "train": 4, "val": 2, "test": 2}}))
    res, out = tmp_path / "results.csv", tmp_path / "out"
    over = ["clusternet.size=32", "clusternet.epochs=2", "clusternet.exams_per_batch=4", "features.n_init=2"]
    kw = dict(data=tmp_path / "exams", seeds=[0], methods=["kmeans", "lsd"], dataset="abdomen_us", overrides=over,
              results=res, tracking_uri=mlflow_uri)
    new = mod.run(out, **kw)
    rows = pd.read_csv(res, keep_default_na=False)
    assert list(rows["method"]) == ["kmeans", "lsd"] and len(new) == 2
    assert rows["test_f1"].astype(float).between(0, 1).all() and rows["nmi"].astype(float).between(0, 1).all()
    man = pd.read_csv(out / "dataset" / "manifest_split_seed0.csv")
    assert set(man["split"]) == {"unlabeled", "train", "val", "test"}
    stamp = (out / "dataset" / "images.npy").stat().st_mtime_ns
    assert mod.run(out, **kw) == []                                          # finished cells are skipped
    assert [r["method"] for r in mod.run(out, **{**kw, "methods": ["kmeans", "pica"]})] == ["pica"]
    assert (out / "dataset" / "images.npy").stat().st_mtime_ns == stamp        # on the data ingested once
    md = tmp_path / "b.md"
    assert mod.main(["--report", str(md), "--results", str(res)]) == 0
    section = md.read_text().split("## abdomen_us")[1].split("\n## ")[0]
    assert "test weighted F1" in section and "| lsd |" in section and "| pica |" in section
    assert "no paper table" in section
    assert "- not run: kmeans, deepcluster, pica, lsd (seeds 0 1 2)" in section   # at the default lengths


def test_report_rebuilds_the_readme_table_between_its_markers_only(tmp_path):
    def row(dataset, method, seed, acc, nmi, machine, settings="", test_f1=""):
        r = dict.fromkeys(mod.COLUMNS, "")
        r.update(dataset=dataset, method=method, seed=str(seed), acc=f"{acc:.6f}", nmi=f"{nmi:.6f}", ari="0.5",
                 top_cluster="0.2", wall_s="1.0", machine=machine, settings=settings, test_f1=test_f1)
        return r
    amd, intel = "AMD EPYC; torch CPU AVX2; 2 threads", "Intel(R) Xeon(R) Processor; torch CPU AVX512; 2 threads"
    rows = [row("usps", "dec", 0, 0.74, 0.75, intel), row("usps", "dec", 1, 0.76, 0.77, intel),
            row("usps", "dec", 2, 0.60, 0.60, intel, settings="ae.epochs=2"),       # not the papers' settings
            row("breastmnist", "kmeans", 0, 0.55, 0.0107, amd),
            row("abdomen_us", "lsd", 0, 0.3, 0.28, intel, test_f1="0.150000")]
    res = tmp_path / "results.csv"
    pd.DataFrame(rows, columns=mod.COLUMNS).to_csv(res, index=False)
    before, after = "# usclf\n\nintro\n\n", "\n\n## The commands\n"
    old_table = "| stale | table |"
    readme = tmp_path / "README.md"
    readme.write_text(f"{before}{README_MARKS[0]}\n{old_table}\n{README_MARKS[1]}{after}")
    assert mod.main(["--report", str(tmp_path / "b.md"), "--results", str(res), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after) and old_table not in text
    lines = text.splitlines()
    assert "| USPS, K = 10 | dec | 0 1 | 0.750 ± 0.014 | 0.733 | 0.760 ± 0.014 | 0.706 | – | Intel Xeon |" in lines
    assert "| BreastMNIST, K = 2 (%) | kmeans | 0 (one seed) | 55.00 | 55.00 | 1.07 | – | – | AMD EPYC |" in lines
    assert any(line.startswith("| abdomen_us") and "| 0.150 | Intel Xeon |" in line for line in lines)
    assert "0.600" not in text and text.count(README_MARKS[0]) == 1       # other settings stay in docs only
    # a README without the markers is left alone
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert mod.main(["--report", str(tmp_path / "b.md"), "--results", str(res), "--readme", str(plain)]) == 0
    assert plain.read_text() == "no markers\n"
