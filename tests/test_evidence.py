"""The evidence pipeline end to end at tiny scale: every cell per split seed, paired labelled data,
diagnostics columns, a re-run that skips finished cells, and the Markdown report."""
from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest

from usclf import cli
from usclf.errors import UsclfError

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    return importlib.import_module(f"usclf.studies.{name}")


def test_strategy_names_are_checked():
    ev = _load("evidence")
    assert ev.parse_strategy("semisup-dc:freematch-twohead") == ("semisup", "dc", "freematch-twohead")
    assert ev.parse_strategy("supervised-random") == ("supervised", "random", None)
    for bad in ("semisup-dc", "supervised-dc:fixmatch-twohead", "boosting-dc"):
        with pytest.raises(UsclfError):
            ev.parse_strategy(bad)
    variants = {"ema": ["teacher=ema", "train.ema=0.999"]}
    assert ev.split_variant("fixmatch-twohead+ema", variants) == ("fixmatch-twohead", ["teacher=ema", "train.ema=0.999"])
    assert ev.split_variant("fixmatch-twohead", variants) == ("fixmatch-twohead", [])
    with pytest.raises(UsclfError, match=r"variant '\+tau' is not defined"):
        ev.split_variant("fixmatch-twohead+tau", variants)
    cfg = ev.EvidenceConfig(strategies=["supervised-dc"], strategy_fractions={"supervised-random": [0.1]})
    with pytest.raises(UsclfError, match="strategy_fractions names strategies not in strategies: supervised-random"):
        ev.run(cfg)


def test_evidence_smoke_run_and_report(tmp_path, mlflow_uri):
    ev, rep = _load("evidence"), _load("evidence_report")
    out = tmp_path / "ev"
    # through the real command line: `usclf study evidence ...` is `python pipelines/evidence.py ...`
    assert cli.main(["study", "evidence", "--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet",
                     f"out={out}"]) == 0
    res = pd.read_csv(out / "results.csv")
    # supervised at 2 fractions + the semisup variant at its one fraction, x 2 split seeds
    assert len(res) == (2 + 1) * 2 and set(res["split_seed"]) == {0, 1}
    assert set(res[res["method"].str.startswith("semisup")]["fraction"]) == {0.5}
    assert res["val_f1"].between(0, 1).all()  # what candidates are chosen on, read back from each model file
    semi = res[res["method"].str.startswith("semisup")]
    assert semi["mask_rate_end"].between(0, 1).all() and "pl_precision_end" in res.columns
    assert pd.read_csv(out / "pretrain.csv")["nmi"].between(0, 1).all()
    before = (out / "results.csv").read_bytes()
    assert ev.main(["--config", str(ROOT / "configs" / "evidence_smoke.yaml"), "--quiet", f"out={out}"]) == 0
    assert (out / "results.csv").read_bytes() == before  # finished cells are skipped, not re-trained
    md = tmp_path / "docs" / "results.md"
    assert rep.main(["--run", str(out), "--out", str(md)]) == 0
    text = md.read_text()
    assert "Validation weighted F1" in text and "not run" in text  # the variant has no 100 % cell
    assert "Test F1 per class" in text and "| 50 % | supervised-dc |" in text
    assert "supervised-dc" in text and "paired" in text and "79.3" in text and (md.parent / "img").is_dir()


def test_study_command_lists_and_rejects(capsys):
    assert cli.main(["study", "--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in cli.STUDIES)
    assert cli.main(["study", "evidnce"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("usclf study: error: unknown study 'evidnce'") and "\n" not in err
    for module, _ in cli.STUDIES.values():  # every listed study resolves to a module with a command line
        assert callable(_load(module).main)
