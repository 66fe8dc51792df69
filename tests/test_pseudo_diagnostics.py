"""Pseudo-label diagnostics that see negatives: entry accuracy, recall and class shares on hand-checked numbers."""
from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from usclf.eval.pseudo_diagnostics import TABLE, PseudoLabelDiagnostics, window_summary

# classes a, b; 4 unlabelled frames; frame 3 has no accepted label (two-head: a whole label set or nothing)
TRUTH = np.array([[1, 1], [1, 1], [0, 1], [1, 1]], dtype=float)
PSEUDO = torch.tensor([[1., 0.], [1., 0.], [1., 1.], [0., 0.]])
MASK = torch.tensor([[True, True], [True, True], [True, True], [False, False]])
Y_LAB = np.array([[1, 0], [1, 0], [0, 1]])  # labelled set: 2 of its 3 positive labels are a, 1 is b
# By hand:
#   accepted positives: a in frames 0, 1, 2 (0 and 1 right), b in frame 2 (right) -> precision 3/4
#   accepted entries: 6 (3 per class). a: right in 0, 1, wrong in 2 -> 2/3. b: "no b" in frames 0 and 1 is
#   wrong (a label set "a" on an a + b frame), right in 2 -> 1/3. Entry accuracy 3/6 = 0.5 < precision 0.75
#   truly positive entries in the batch: a 3 (frames 0, 1, 3), b 4 -> recall a 2/3, b 1/4, micro 3/7
#   shares of the accepted positives a 3/4, b 1/4; of the truth a 3/7, b 4/7; of the labelled set a 2/3, b 1/3
#   share gap (total variation): 3/4 - 3/7 = 9/28


def _diag() -> PseudoLabelDiagnostics:
    d = PseudoLabelDiagnostics(["a", "b"], TRUTH, Y_LAB)
    out = d.update(0, PSEUDO, MASK, torch.arange(4))
    assert out["pl/precision"] == pytest.approx(0.75) and out["pl/accuracy"] == pytest.approx(0.5)
    assert out["pl/recall"] == pytest.approx(3 / 7)
    return d


def test_entry_accuracy_recall_and_shares_per_class():
    tab = _diag().table(window=1)
    assert list(tab.columns) == TABLE and TABLE[:6] == ["step", "class", "accepted", "precision", "recall", "mask_rate"]
    t = tab.set_index("class")
    assert t.loc["a", "precision"] == pytest.approx(2 / 3) and t.loc["b", "precision"] == pytest.approx(1.0)
    assert t.loc["a", "entry_acc"] == pytest.approx(2 / 3) and t.loc["b", "entry_acc"] == pytest.approx(1 / 3)
    assert t.loc["a", "recall"] == pytest.approx(2 / 3) and t.loc["b", "recall"] == pytest.approx(1 / 4)
    assert (t["entries"] == 3).all() and list(t["right"]) == [2, 1] and list(t["judged"]) == [3, 3]
    assert list(t["pl_share"]) == pytest.approx([3 / 4, 1 / 4]) and list(t["truth_share"]) == pytest.approx([3 / 7, 4 / 7])
    assert list(t["labeled_share"]) == pytest.approx([2 / 3, 1 / 3])
    assert t["mask_rate"].iloc[0] == pytest.approx(0.75)
    w = window_summary(tab)
    assert w == pytest.approx({"recall": 3 / 7, "entry_acc": 0.5, "share_gap": 9 / 28})


def test_windows_sum_counts_and_old_checkpoints_resume():
    d = _diag()
    d.update(1, PSEUDO, MASK, torch.arange(4))  # the same step twice: ratios of sums stay the same
    tab = d.table(window=2)
    assert len(tab) == 2 and list(tab["right"]) == [4, 2] and list(tab["entry_acc"]) == pytest.approx([2 / 3, 1 / 3])
    # a checkpoint from before the entry counts (5 count rows): resumes, its entry ratios are unknown (NaN)
    old = d.state_dict()
    old["counts"] = [c[:5] for c in old["counts"]]
    d2 = PseudoLabelDiagnostics(["a", "b"], TRUTH, Y_LAB)
    d2.load_state_dict(old)
    t2 = d2.table(window=2)
    assert t2["entry_acc"].isna().all() and list(t2["precision"]) == pytest.approx([2 / 3, 1.0])


def test_without_truth_shares_against_the_labelled_set_only():
    d = PseudoLabelDiagnostics(["a", "b"], None, Y_LAB)
    assert d.update(0, PSEUDO, MASK, torch.arange(4)) == {"pl/accepted_pos": 4.0}
    t = d.table(window=1).set_index("class")
    assert t["precision"].isna().all() and t["entry_acc"].isna().all() and t["truth_share"].isna().all()
    assert list(t["entries"]) == [3, 3] and list(t["pl_share"]) == pytest.approx([3 / 4, 1 / 4])
    assert list(t["labeled_share"]) == pytest.approx([2 / 3, 1 / 3])
    w = window_summary(d.table(window=1))
    assert np.isnan(w["recall"]) and np.isnan(w["entry_acc"]) and np.isnan(w["share_gap"])


def test_csv_figure_and_evidence_columns(tmp_path):
    ev = importlib.import_module("usclf.studies.evidence")
    cell = tmp_path / "cell"
    csv, png = _diag().write(cell / "diagnostics", window=1, title="test")
    assert png.stat().st_size > 5000 and list(pd.read_csv(csv).columns) == TABLE
    got = ev._diag(cell)
    # the columns results.csv had before stay first and unchanged; the new ones come last
    assert list(got)[:3] == ["mask_rate_end", "pl_precision_end", "pl_accepted_end"]
    assert list(got)[3:] == ["pl_recall_end", "pl_entry_acc_end", "pl_share_gap_end"]
    assert got["pl_precision_end"] == pytest.approx(0.75, abs=1e-3) and got["pl_accepted_end"] == 4
    assert got["pl_entry_acc_end"] == pytest.approx(0.5) and got["pl_recall_end"] == pytest.approx(3 / 7, abs=1e-4)
    assert got["pl_share_gap_end"] == pytest.approx(9 / 28, abs=1e-3)
    # a pseudo_labels.csv written before the entry counts existed: old columns read, new ones NaN
    pd.read_csv(csv)[TABLE[:6]].to_csv(csv, index=False)
    old = ev._diag(cell)
    assert old["pl_precision_end"] == pytest.approx(0.75, abs=1e-3) and np.isnan(old["pl_entry_acc_end"])
