"""Which frames to label next: the ranking on hand-checkable inputs, and `usclf suggest` through the CLI on
simulated exams (valid, deterministic suggestions; the page; one-line errors); `labeled_ids` in finetune."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import calibrated, simulated_dataset
from usclf.active.select import Candidates, margin_uncertainty, select_frames, thumbnails
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.transforms import AugmentConfig
from usclf.errors import UsclfError
from usclf.eval.inference import infer
from usclf.models.heads import build_classifier
from usclf.models.modelfile import ModelInfo, save_model_file
from usclf.stages.common import preprocess_meta
from usclf.stages.scoring import class_scores


def _cands(labelled, cluster, typ, unc, exam=None, thumbs=None):
    n = len(cluster)
    thumbs = np.eye(n) if thumbs is None else thumbs  # all different unless a test says otherwise
    return Candidates(np.array(cluster), np.array(typ, float), np.array(unc, float), [f"u{i}" for i in range(n)],
                      np.array(exam or [f"e{i}" for i in range(n)]), thumbs, np.array(labelled, bool))


def test_coverage_first_fills_unlabelled_clusters_with_their_most_typical_frame_then_uncertainty():
    # clusters 0 (frame 0 labelled), 1 (frames 2, 3) and 2 (frames 4, 5); cluster 2's pool is larger (3 frames)
    c = _cands([1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 2, 2, 2], [.9, .5, .3, .8, .6, .7, .2],
               [0, .1, .9, .2, .3, .4, .95])
    picks = select_frames(c, budget=3)
    # cluster 2 first (0 labelled, 3 in the pool) with its most typical frame 5, then cluster 1's frame 3; the
    # last pick is the most uncertain frame left (6, 0.95), not cluster 0's (already covered)
    assert [p.index for p in picks] == [5, 3, 6]
    assert picks[0].reason == "cover cluster 2 (0 labelled)" and picks[0].score == pytest.approx(.7)
    assert picks[2].reason == "u6"
    assert [p.index for p in select_frames(c, budget=3, strategy="uncertainty")] == [6, 2, 5]
    assert [p.index for p in select_frames(c, budget=3, cover=2)][:3] == [5, 3, 1]  # cover=2: second pass


def test_near_duplicates_of_one_exam_are_passed_over_but_not_across_exams():
    same = np.tile(np.eye(4)[0], (4, 1))                       # four identical thumbnails
    c = _cands([0, 0, 0, 0], [0, 0, 0, 0], [.4, .3, .2, .1], [.9, .8, .7, .6], exam=["a", "a", "b", "b"],
               thumbs=same)
    assert [p.index for p in select_frames(c, budget=4, strategy="uncertainty")] == [0, 2]
    c.labelled[2] = True                                       # a labelled frame of exam b rules b out too
    assert [p.index for p in select_frames(c, budget=4, strategy="uncertainty")] == [0]
    t = thumbnails(np.stack([np.arange(64, dtype=np.uint8).reshape(8, 8)] * 2))
    assert t @ t[0] == pytest.approx([1.0, 1.0])               # correlation of identical images is 1


def test_random_is_seeded_and_margin_names_the_class_nearest_its_threshold():
    c = _cands([0] * 20, [0] * 20, [0] * 20, [0] * 20)
    a, b = (select_frames(c, 5, "random", seed=s) for s in (0, 1))
    assert [p.index for p in a] == [p.index for p in select_frames(c, 5, "random", seed=0)]
    assert [p.index for p in a] != [p.index for p in b]
    u, why = margin_uncertainty(np.array([[0.9, 0.45], [0.1, 0.9]]), np.array([0.5, 0.5]), ["liver", "spleen"])
    assert u == pytest.approx([-0.05, -0.4]) and why[0] == "uncertain: spleen (score 0.45, threshold 0.50)"
    with pytest.raises(UsclfError, match="strategy"):
        select_frames(c, 5, "greedy")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suggest")
    ds_path = simulated_dataset(tmp, exams=8, seed=4)
    ds = open_dataset(ds_path, ds_path / "manifest_split_seed0.csv")
    pre, rows = preprocess_meta(ds, AugmentConfig(size=32)), np.arange(len(ds.manifest))
    torch.manual_seed(0)
    ml = calibrated(build_classifier("resnet18", "multilabel", num_classes=len(ds.classes)), ds.images)
    th = np.median(class_scores("multilabel", infer(ml, ds, rows, AugmentConfig(size=32))["out"]), axis=0)
    save_model_file(tmp / "ml.pt", ml, ModelInfo(ds.classes, "finetune", preprocess=pre, thresholds=th.tolist()))
    cl = calibrated(build_classifier("resnet18", "cluster", num_clusters=6), ds.images)
    save_model_file(tmp / "cl.pt", cl, ModelInfo(ds.classes, "pretrain", preprocess=pre))
    return tmp, ds_path, ds


def test_suggest_cli_writes_valid_deterministic_suggestions_and_a_page(world, tmp_path, capsys):
    tmp, ds_path, ds = world
    few = ds.manifest[ds.manifest["split"] == "train"]["image_id"].astype(str).tolist()[:3]
    pd.DataFrame({"image_id": few}).to_csv(tmp_path / "labelled.csv", index=False)  # 3 frames labelled so far
    args = ["suggest", "--model", str(tmp / "ml.pt"), "--clusters", str(tmp / "cl.pt"), "--data", str(ds_path),
            "--budget", "7", "--labeled", str(tmp_path / "labelled.csv"), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "suggested 7 of 23 unlabelled frames (3 labelled so far)" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "suggestions.csv").read_bytes()
    assert a == (tmp_path / "b" / "suggestions.csv").read_bytes()            # same inputs, same bytes
    df = pd.read_csv(tmp_path / "a" / "suggestions.csv")
    man = ds.manifest.set_index("image_id")
    assert len(df) == 7 and df["image_id"].is_unique and df["rank"].tolist() == list(range(1, 8))
    assert (man.loc[df["image_id"], "split"] == "unlabeled").all()          # only unlabelled frames
    assert df["reason"].str.startswith("cover cluster").any()
    page = (tmp_path / "a" / "suggestions.html").read_text()
    assert page.count("<img") == 7 and len(list((tmp_path / "a" / "suggestions").glob("*.png"))) == 7
    assert not any(pid in page for pid in ds.manifest.get("patient_id", pd.Series([], dtype=str)).astype(str))
    # random baseline: seeded; a clustering model alone also works (its own clusters and uncertainty)
    rnd = ["--strategy", "random", "--out"]
    assert main([*args, *rnd, str(tmp_path / "r0")]) == 0
    assert main([*args, *rnd, str(tmp_path / "r1"), "--seed", "1"]) == 0
    r0, r1 = (pd.read_csv(tmp_path / d / "suggestions.csv")["image_id"].tolist() for d in ("r0", "r1"))
    assert r0 != r1 and set(r0) <= set(man.index[man["split"] == "unlabeled"])
    assert main(["suggest", "--model", str(tmp / "cl.pt"), "--data", str(ds_path), "--budget", "3", "--quiet",
                 "--out", str(tmp_path / "c")]) == 0


def test_suggest_refuses_bad_input_in_one_line(world, tmp_path, capsys):
    tmp, ds_path, _ = world
    base = ["suggest", "--data", str(ds_path), "--out", str(tmp_path / "o"), "--quiet"]
    cases = [(["--model", str(tmp / "ml.pt"), "--budget", "0"], "budget"),
             (["--model", str(tmp / "ml.pt"), "--budget", "3", "--clusters", str(tmp / "ml.pt")],
              "not a clustering model"),
             (["--model", str(tmp / "ml.pt"), "--budget", "3", "--pool", "nosuch"], "no unlabelled frames"),
             (["--model", str(tmp / "ml.pt"), "--budget", "3", "--labeled", str(tmp / "none.csv")], "not found")]
    for extra, msg in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_finetune_trains_on_exactly_the_labeled_ids(world, tmp_path, mlflow_uri, capsys):
    _, ds_path, ds = world
    train = ds.manifest[ds.manifest["split"] == "train"]["image_id"].astype(str).tolist()
    pd.DataFrame({"image_id": train[:5]}).to_csv(tmp_path / "ids.csv", index=False)
    common = ["finetune", "--data", str(ds_path), "--quiet", "train.epochs=1", "augment.size=32",
              "data.batch_size=4", "figures=false"]
    assert main([*common, "--out", str(tmp_path / "ft"), f"labeled_ids={tmp_path / 'ids.csv'}"]) == 0
    assert "= 5 images" in capsys.readouterr().out
    val = ds.manifest[ds.manifest["split"] == "val"]["image_id"].astype(str).tolist()[:1]
    pd.DataFrame({"image_id": train[:2] + val}).to_csv(tmp_path / "bad.csv", index=False)
    assert main([*common, "--out", str(tmp_path / "ft2"), f"labeled_ids={tmp_path / 'bad.csv'}"]) == 2
    assert "not train rows" in capsys.readouterr().err


@pytest.mark.slow
def test_annotation_loop_adds_the_budget_each_round_and_reports_every_strategy(tmp_path, mlflow_uri):
    from usclf.studies.annotation_loop import AnnotationLoopConfig, run

    cfg = AnnotationLoopConfig(out=str(tmp_path / "loop"), exams=24, size=32, budget=5, rounds=2, seeds=[0],
                               pretrain_overrides=["train.epochs=1"], finetune_overrides=["train.epochs=2"])
    df = run(cfg, tracking_uri=mlflow_uri, progress=False)
    start = int(df.loc[df["strategy"] == "start", "n_labelled"].iloc[0])
    for st in cfg.strategies:
        g = df[df["strategy"] == st].sort_values("round")
        assert g["n_labelled"].tolist() == [start + 5, start + 10], st   # budget added, no frame twice
    r1 = tmp_path / "loop" / "runs" / "seed0-strategycoverage-round1"
    sug = pd.read_csv(r1 / "suggest" / "suggestions.csv")
    before = pd.read_csv(tmp_path / "loop" / "runs" / "seed0-strategystart-round0" / "labeled.csv")["image_id"]
    assert len(sug) == 5 and not set(sug["image_id"]) & set(before)                 # only frames not labelled yet
    table = (tmp_path / "loop" / "annotation_loop.md").read_text()
    assert all(f"| {st} |" in table for st in cfg.strategies) and "Paired gain over random" in table
    assert (tmp_path / "loop" / "annotation_loop.png").is_file()
