"""finetune and semisup under `torchrun --nproc-per-node 2` (gloo, CPU) against one process, and an elastic
restart: a rank that dies mid-run, `--max-restarts 1`, and the same final weights as an uninterrupted run.

Every run uses the same config (batch sizes are global: each rank takes its half of every batch) with
`train.sync_bn=true`, which makes BatchNorm normalise with the global batch's statistics: with per-rank
BatchNorm (the default) two processes compute another step than one process, by design (docs/performance.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import simulated_dataset
from usclf.cli import main
from usclf.models.modelfile import load_model_file
from usclf.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5
# 23 labelled train images (global batches of 8, 4 a rank: 2 steps an epoch), 6 unlabelled exams, at 64 px.
# Float rounding differs at 1e-7 (one BatchNorm kernel vs gathered statistics, sums in another order), so the
# runs must not amplify it: at 32 px ResNet18's last BatchNorm layers normalise 1 x 1 maps over a few images,
# where a 1e-7 change of the weights moves them by 1e-3 two steps later (so does any perturbation, even in one
# process); Adam turns such differences in near-zero gradients into lr-sized steps. Hence 64 px and SGD.
TINY = ["--quiet", "--init", "random", "--label-fraction", "1.0", "--seed", "0", "augment.size=64",
        "data.batch_size=8", "figures=false", "train.sync_bn=true", "train.optim.name=sgd",
        "train.optim.momentum=0.9"]
STAGES = {
    "finetune": ["--config", "configs/finetune_demo.yaml", "train.epochs=3", "train.ckpt_every=1",
                 "train.optim.lr=0.01"],
    # tau 0: every pseudo-label is kept, so the unlabelled loss (uneven per rank: exams differ in size) counts
    "semisup": ["--config", "configs/semisup_demo.yaml", "tau=0.0", "unlabeled_exams=2", "data.max_images_per_exam=4",
                "eval_every=3", "train.max_steps=6", "train.ckpt_every=2",
                # lr 0.01 grows the first step's 2.6e-7 (float64 gathered BatchNorm statistics vs torch's kernel)
                # about 3x a step, to 1e-4 by step 6, with every step's loss equal to 1e-5; at 0.003: 1.2e-6
                "train.optim.lr=0.003"],
}
KILL_AFTER = {"finetune": 4, "semisup": 5}  # one step after a mid-epoch checkpoint (steps 3 and 4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return simulated_dataset(tmp_path_factory.mktemp("ddp_stages"), 12, seed=1, raw_size=64, size=64)


def _args(stage: str, ds: Path, out: Path) -> list[str]:
    return [stage, *STAGES[stage], "--data", str(ds), "--out", str(out), *TINY]


def _torchrun(args: list[str], kill: str | None = None) -> str:
    """`torchrun --standalone --nproc-per-node 2 [--max-restarts 1] ...`; returns its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    if kill:
        env["USCLF_TEST_KILL"] = kill
        cmd += ["--max-restarts", "1", str(ROOT / "tests" / "ddp_kill_once.py")]
    else:
        cmd += ["-m", "usclf.cli"]
    r = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    return log


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if v.is_floating_point():
            # rtol: BatchNorm running variances are O(1-10), summed in another order (1.7e-5 apart, 6e-6 relative)
            assert torch.allclose(v, b[k], atol=ATOL, rtol=ATOL), f"{what}: {k} differs by {(v - b[k]).abs().max():.2e}"
        else:
            assert torch.equal(v, b[k]), f"{what}: {k}"


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["finetune", "semisup"])
def test_two_ranks_and_a_restarted_job_end_with_the_one_process_weights(stage, dataset, tmp_path, mlflow_uri,
                                                                        monkeypatch):
    one, two, again = tmp_path / "one", tmp_path / "two", tmp_path / "restarted"
    initial = {}
    fit = Trainer.fit

    def remember_initial(self, loader, resume=False):
        initial.update({k: v.clone() for k, v in self.model.state_dict().items()})
        return fit(self, loader, resume)

    monkeypatch.setattr(Trainer, "fit", remember_initial)
    assert main(_args(stage, dataset, one)) == 0
    _torchrun(_args(stage, dataset, two))
    marker = tmp_path / "killed"
    _torchrun(_args(stage, dataset, again), kill=f"1:{KILL_AFTER[stage]}:{marker}")
    assert marker.is_file()  # rank 1 really died once (after a checkpoint), and torchrun restarted the job

    ref = _final(one)
    moved = max((ref[k] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point())
    assert moved > 100 * ATOL  # training moved the weights: the comparison is not between initial weights
    _same(ref, _final(two), "2 processes vs 1")
    _same(ref, _final(again), "restarted 2 processes vs 1")
    ck1, ck2 = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (one, two))
    assert ck1["step"] == ck2["step"] and "ranks" in ck2 and len(ck2["ranks"]) == 2

    # the model file (best validation weights, thresholds chosen on validation) is written once, by rank 0
    m1, info1 = load_model_file(one / "model.pt")
    for other in (two, again):
        m2, info2 = load_model_file(other / "model.pt")
        _same(m1.state_dict(), m2.state_dict(), f"model file of {other.name}")
        assert info2.thresholds == pytest.approx(info1.thresholds, abs=1e-4)
        assert info2.provenance["best_epoch"] == info1.provenance["best_epoch"]
    # epoch metrics are reduced over the ranks: the two-process history is the one-process history
    for key in ("train/loss", "val/metric"):
        assert [r[key] for r in ck2["history"]] == pytest.approx([r[key] for r in ck1["history"]], abs=1e-4)
    if stage == "semisup":  # pseudo-label diagnostics over every rank's rows, written by rank 0
        pd.testing.assert_frame_equal(pd.read_csv(one / "diagnostics" / "pseudo_labels.csv"),
                                      pd.read_csv(two / "diagnostics" / "pseudo_labels.csv"))
    # one MLflow run per job, by rank 0; the restarted job's killed attempt leaves an unfinished run
    status = sorted(r.info.status for r in _runs(mlflow_uri, f"usclf-{stage}"))
    assert status.count("FINISHED") == 3 and len(status) == 4, status
