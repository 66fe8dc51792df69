"""The evidence pipeline end to end at tiny scale: every cell per split seed, paired labelled data,
diagnostics columns, a re-run that skips finished cells, and the Markdown report."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from usclf import cli
from usclf.errors import UsclfError

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    return importlib.import_module(f"usclf.studies.{name}")


def test_strategy_names_are_checked():
    ev = _load("evidence")
    assert ev.parse_strategy("semisup-dc:freematch-twohead") == ("semisup", "dc", "freematch-twohead")
    assert ev.parse_strategy("supervised-random") == ("supervised", "random", None)
    assert ev.parse_strategy("supervised-dc+sgd") == ("supervised", "dc", None)
    assert ev.parse_strategy("semisup-dc:fixmatch-twohead+sgd") == ("semisup", "dc", "fixmatch-twohead")
    for bad in ("semisup-dc", "supervised-dc:fixmatch-twohead", "boosting-dc"):
        with pytest.raises(UsclfError):
            ev.parse_strategy(bad)
    variants = {"ema": ["teacher=ema", "train.ema=0.999"]}
    assert ev.split_variant("fixmatch-twohead+ema", variants) == ("fixmatch-twohead", ["teacher=ema", "train.ema=0.999"])
    assert ev.split_variant("fixmatch-twohead", variants) == ("fixmatch-twohead", [])
    assert ev.split_variant("supervised-dc+ema", variants) == ("supervised-dc", ["teacher=ema", "train.ema=0.999"])
    with pytest.raises(UsclfError, match=r"variant '\+tau' is not defined"):
        ev.split_variant("fixmatch-twohead+tau", variants)
    cfg = ev.EvidenceConfig(strategies=["supervised-dc"], strategy_fractions={"supervised-random": [0.1]})
    with pytest.raises(UsclfError, match="strategy_fractions names strategies not in strategies: supervised-random"):
        ev.run(cfg)


@pytest.mark.slow
def test_evidence_smoke_run_and_report(tmp_path, mlflow_uri):
    ev, rep = _load("evidence"), _load("evidence_report")
    out = tmp_path / "ev"
    # through the real command line: `usclf study evidence ...` is `python pipelines/evidence.py ...`
    assert cli.main(["study", "evidence", "--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet",
                     f"out={out}"]) == 0
    res = pd.read_csv(out / "results.csv")
    # supervised at 2 fractions + a supervised and the semisup variant at their one fraction, x 2 split seeds
    assert len(res) == (2 + 1 + 1) * 2 and set(res["split_seed"]) == {0, 1}
    assert set(res[res["method"].str.startswith("semisup")]["label_fraction"]) == {0.5}
    cells = out / "split0" / "train" / "runs"
    epochs = {m: yaml.safe_load((cells / f"method{m}-label_fraction0.5-seed0" / "config.yaml").read_text())["train"]["epochs"]
              for m in ("supervised-dc", "supervised-dc+e1")}
    assert epochs == {"supervised-dc": 2, "supervised-dc+e1": 1}  # the variant's overrides reach the finetune cell
    assert res["val_f1"].between(0, 1).all()  # what candidates are chosen on, read back from each model file
    semi = res[res["method"].str.startswith("semisup")]
    assert semi["mask_rate_end"].between(0, 1).all() and "pl_precision_end" in res.columns
    assert pd.read_csv(out / "pretrain.csv")["nmi"].between(0, 1).all()
    # the per-split file cells are appended to: diagnostics added later stay its last columns
    cols = list(pd.read_csv(out / "split0" / "train" / "results.csv").columns)
    assert cols[-3:] == ["pl_recall_end", "pl_entry_acc_end", "pl_share_gap_end"]
    # entry accuracy is measured wherever anything was accepted in the last window (NaN where nothing was)
    assert ((semi["mask_rate_end"] > 0) == semi["pl_entry_acc_end"].between(0, 1)).all()
    _assert_one_experiment(mlflow_uri, res)
    before = (out / "results.csv").read_bytes()
    assert ev.main(["--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet", f"out={out}"]) == 0
    assert (out / "results.csv").read_bytes() == before  # finished cells are skipped, not re-trained
    # collect_only rebuilds the tables from the per-split cell files alone (what a cut-short run commits)
    (out / "results.csv").unlink()
    shutil.rmtree(out / "split1" / "train")  # as if split 1 had not trained yet
    assert ev.main(["--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet", f"out={out}",
                    "collect_only=true"]) == 0
    part = pd.read_csv(out / "results.csv")
    assert part.equals(res[res["split_seed"] == 0].reset_index(drop=True))
    # nothing to collect: one line, exit 2, through the entry `usclf study` and `python pipelines/...` share
    assert cli.main(["study", "evidence", "--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet",
                     f"out={tmp_path / 'none'}", "collect_only=true"]) == 2
    md = tmp_path / "docs" / "results.md"
    assert rep.main(["--run", str(out), "--out", str(md)]) == 0
    text = md.read_text()
    assert "Validation weighted F1" in text and "not run" in text  # the variant has no 100 % cell
    assert "Test F1 per class" in text and "| 50 % | supervised-dc |" in text
    assert "supervised-dc" in text and "paired" in text and "79.3" in text and (md.parent / "img").is_dir()


def _assert_one_experiment(uri: str, res: pd.DataFrame) -> None:
    """One experiment: the evidence parent, under it a pretrain and a train study parent per split seed, under
    those the cells (tagged strategy, init, label_fraction, seed, split_seed); the top parent's test_f1/<strategy>
    series (step = label %) is the mean over seeds x split seeds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("evidence")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    assert {e.name for e in client.search_experiments()} <= {"evidence", "Default"}
    parent_of = {i: r.data.tags.get("mlflow.parentRunId") for i, r in runs.items()}
    top = [i for i, p in parent_of.items() if p is None]
    assert len(top) == 1
    studies = {runs[i].data.tags["study"]: i for i, p in parent_of.items() if p == top[0]}
    assert set(studies) == {f"evidence-{k}split{s}" for k in ("", "pretrain-") for s in (0, 1)}
    cells = [r for i, r in runs.items() if parent_of[i] in studies.values()]
    assert len(cells) == 2 + len(res)  # one LSD pretrain per split seed + the training cells
    train = [r for r in cells if r.data.tags["stage"] != "pretrain"]
    got = {(r.data.tags["strategy"], r.data.tags["init"], float(r.data.tags["label_fraction"]), r.data.tags["split_seed"],
            r.data.metrics["label_fraction"]) for r in train}
    assert got == {(m, "lsd", f, str(s), f) for m, f, s in res[["method", "label_fraction", "split_seed"]].itertuples(index=False)}
    for i, r in runs.items():  # a cell's split seed is its study's
        if parent_of[i] in studies.values():
            assert runs[parent_of[i]].data.tags["study"].endswith(f"split{r.data.tags['split_seed']}")
    hist = client.get_metric_history(top[0], "test_f1/supervised-dc")
    want = res[res["method"] == "supervised-dc"].groupby("label_fraction")["f1"].mean()
    assert sorted((m.step, round(m.value, 6)) for m in hist) == [(50, round(want[0.5], 6)), (100, round(want[1.0], 6))]
    assert [m.step for m in client.get_metric_history(top[0], "test_f1/semisup-dc:fixmatch-twohead_t90")] == [50]
    assert {"results.csv", "label_fractions.png"} <= {a.path for a in client.list_artifacts(top[0])}


def test_a_random_init_study_pretrains_nothing_and_runs(tmp_path):
    """The digits benchmark's shape: no pretrain method, random-init arms only (it once failed on an empty table)."""
    ev = _load("evidence")
    over = ["pretrain_methods=[]", "split_seeds=[0]", "fractions=[1.0]", "strategies=[supervised-random]",
            "strategy_fractions={}", "finetune_overrides=[augment.size=32,data.batch_size=4,train.epochs=1]",
            f"out={tmp_path / 'ev'}"]
    assert ev.main(["--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet", *over]) == 0
    res = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert list(res["method"]) == ["supervised-random"] and res["f1"].between(0, 1).all()
    assert pd.read_csv(tmp_path / "ev" / "pretrain.csv").empty


def test_study_command_lists_and_rejects(capsys):
    assert cli.main(["study", "--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in cli.STUDIES)
    assert cli.main(["study", "evidnce"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("usclf study: error: unknown study 'evidnce'") and "\n" not in err
    for module, _ in cli.STUDIES.values():  # every listed study resolves to a module with a command line
        assert callable(_load(module).main)


def test_a_variant_is_paired_with_its_supervised_twin_when_that_was_run():
    from usclf.studies.evidence_report import paired_table

    f1 = {"supervised-dc": (0.70, 0.70), "supervised-dc+sgd": (0.60, 0.62), "semisup-dc:m+sgd": (0.65, 0.66),
          "semisup-dc:m": (0.72, 0.71), "semisup-dc:m+ema": (0.75, 0.74)}
    res = pd.DataFrame([{"method": m, "split_seed": 0, "label_fraction": 0.1, "seed": s, "f1": v[s]}
                        for m, v in f1.items() for s in (0, 1)])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in paired_table(res).splitlines()[2:]}
    assert "| supervised-dc+sgd | 10 % | 4.500" in rows["semisup-dc:m+sgd"]  # +5 and +4 points vs its twin
    assert "| supervised-dc | 10 % | 1.500" in rows["semisup-dc:m"]
    assert "| supervised-dc | 10 % | 4.500" in rows["semisup-dc:m+ema"]  # no supervised +ema arm: the plain one


def test_each_plain_arm_is_paired_with_its_variant_controls():
    from usclf.studies.evidence_report import variant_table

    f1 = {"semisup-dc:m": (0.72, 0.71), "semisup-dc:m+nounl": (0.70, 0.72), "supervised-dc+fm": (0.6, 0.6),
          "semisup-dc:q+x": (0.5, 0.5)}   # no plain supervised-dc / semisup-dc:q arm: nothing to pair
    res = pd.DataFrame([{"method": m, "split_seed": 0, "label_fraction": 0.2, "seed": s, "f1": v[s]}
                        for m, v in f1.items() for s in (0, 1)])
    rows = variant_table(res).splitlines()[2:]
    assert len(rows) == 1
    assert rows[0].startswith("| semisup-dc:m | semisup-dc:m+nounl | 20 % | 0.500 [")  # +2 and -1 points
    assert rows[0].endswith("| 1/2 |")
    assert variant_table(res[res["method"] != "semisup-dc:m+nounl"]) == ""
