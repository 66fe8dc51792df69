"""Messy real-world input for ingest / split / the training stages: each case a real file or a real process.

Every case here went wrong before (silent wrong result, traceback or lost data): see docs/reliability.md.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import simulated_dataset, tiny_disk
from usclf.atomic_io import save_checkpoint
from usclf.cli import main
from usclf.data.cache import open_dataset
from usclf.data.ingest import IngestConfig, ingest, read_labels_csv
from usclf.errors import UsclfError
from usclf.stages.common import DataConfig, open_split

CLASSES = ["liver", "kidney"]
TINY = ["data.exams_per_batch=2", "data.max_images_per_exam=4", "augment.size=32", "train.progress=false",
        "train.epochs=1"]


def _frame(seed: int, size: int = 48) -> np.ndarray:
    """A bright textured disc on black: survives the scan-region crop."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 2 - 2, 120, -1)
    return np.clip(img + rng.integers(0, 100, img.shape) * (img > 0), 0, 255).astype(np.uint8)


def _export(root: Path, exams: int = 4, per_exam: int = 2, seed: int = 0) -> Path:
    for e in range(exams):
        (root / f"exam{e}").mkdir(parents=True, exist_ok=True)
        for i in range(per_exam):
            cv2.imwrite(str(root / f"exam{e}" / f"img{i}.png"), _frame(seed * 100 + e * 10 + i))
    return root


def _labels(root: Path, rows: list[dict]) -> Path:
    p = root.parent / f"{root.name}_labels.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usclf.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ data
def test_reingest_removes_stale_split_files_and_a_stale_copy_is_refused(tmp_path):
    ds = tmp_path / "ds"
    a = _export(tmp_path / "a", exams=6, seed=1)
    lab = _labels(a, [{"path": f"exam{e}/img{i}.png", "liver": e % 2, "kidney": 1 - e % 2}
                      for e in range(6) for i in range(2)])
    assert main(["ingest", str(a), "--out", str(ds), "--labels", str(lab), "--quiet", "--size", "32", "ingest.classes=[liver,kidney]",
                 "split.unlabeled=0", "split.train=2", "split.val=2", "split.test=2"]) == 0
    assert main(["split", str(ds), "--seed", "1", "unlabeled=0", "train=2", "val=2", "test=2"]) == 0
    stale = (ds / "manifest_split_seed1.csv").read_bytes()
    b = _export(tmp_path / "b", exams=5, per_exam=3, seed=2)  # other images, other rows
    assert main(["ingest", str(b), "--out", str(ds), "--quiet", "--size", "32", "--no-split"]) == 0
    assert not list(ds.glob("manifest_split_seed*.csv"))  # the old ingest's splits are gone
    (ds / "manifest_split_seed1.csv").write_bytes(stale)  # e.g. restored from a backup
    with pytest.raises(UsclfError, match="earlier ingest"):
        open_split(DataConfig(path=str(ds), split_seed=1))


def test_labels_csv_frame_row_conflicting_with_whole_file_row_is_refused(tmp_path):
    root = _export(tmp_path / "x", exams=1)
    bad = _labels(root, [{"path": "exam0/img0.png", "frame": "0", "liver": 1, "kidney": 0},
                         {"path": "exam0/img0.png", "frame": "", "liver": 0, "kidney": 0}])
    with pytest.raises(UsclfError, match=r"lines 3 and 2: conflicting rows for exam0/img0.png: liver is 0 "
                                         r"for the whole file but 1 for frame 0"):
        read_labels_csv(bad, CLASSES)
    same = _labels(root, [{"path": "exam0/img0.png", "frame": "0", "liver": 1, "kidney": 0},
                          {"path": "exam0/img0.png", "frame": "", "liver": 1, "kidney": 0}])
    assert len(read_labels_csv(same, CLASSES)) == 2


def test_unlabelled_archive_ingests_into_unlabeled_and_says_how_to_split(tmp_path):
    root = _export(tmp_path / "arch", exams=3)
    r = _cli("ingest", str(root), "--out", str(tmp_path / "ds"), "--quiet", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert "exam-disjoint (no patient ids)" in r.stdout and "patient-disjoint" not in r.stdout
    assert "no labels: every exam is in `unlabeled`" in r.stdout and "--labels" in r.stdout
    man = pd.read_csv(tmp_path / "ds" / "manifest_split_seed0.csv")
    assert len(man) == 6 and set(man["split"]) == {"unlabeled"}


def test_split_says_patient_disjoint_only_with_patient_ids(tmp_path):
    root = _export(tmp_path / "p", exams=6)
    rows = [{"path": f"exam{e}/img{i}.png", "liver": e % 2, "kidney": 1 - e % 2, "patient_id": f"P{e // 2}"}
            for e in range(6) for i in range(2)]
    r = _cli("ingest", str(root), "--out", str(tmp_path / "ds"), "--labels", str(_labels(root, rows)),
             "--quiet", "--size", "32", "ingest.classes=[liver,kidney]", "split.unlabeled=0", "split.train=1", "split.val=1", "split.test=1")
    assert r.returncode == 0, r.stderr
    assert "split (seed 0, patient-disjoint)" in r.stdout


def test_symlinked_exam_folders_are_followed_once(tmp_path):
    root = _export(tmp_path / "exp", exams=2)
    elsewhere = _export(tmp_path / "elsewhere", exams=1, per_exam=3, seed=9) / "exam0"
    os.symlink(elsewhere, root / "linked_exam")
    os.symlink(root / "exam0", root / "exam0" / "loop")  # a loop back into the exam itself
    res = ingest(root, tmp_path / "ds", cfg=IngestConfig(size=32, classes=CLASSES), progress=False)
    man = open_dataset(tmp_path / "ds").manifest
    assert res.n_frames_kept == 7 and man["path"].is_unique
    assert sorted(man.loc[man["path"].str.startswith("linked_exam/"), "path"]) == [
        "linked_exam/img0.png", "linked_exam/img1.png", "linked_exam/img2.png"]
    report = pd.read_csv(tmp_path / "ds" / "ingest_report.csv", keep_default_na=False)
    assert "empty exam folder" not in set(report["reason"])


def test_dates_are_dropped_unless_asked_and_reasons_hold_no_absolute_path(tmp_path):
    root = _export(tmp_path / "exp", exams=1)
    (root / "exam0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    ingest(root, tmp_path / "ds", cfg=IngestConfig(size=32, classes=CLASSES), progress=False)
    text = (tmp_path / "ds" / "ingest_report.csv").read_text() + (tmp_path / "ds" / "dataset.json").read_text()
    assert str(tmp_path) not in text.replace(f'"source": "{root.name}"', "")


# ------------------------------------------------------------------------------------------ outputs
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return simulated_dataset(tmp_path_factory.mktemp("hard"), 12, seed=3, fractions=(0.5, 0.2, 0.15, 0.15))


@pytest.mark.slow
def test_out_that_is_a_file_is_one_line_for_every_command(dataset, tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    export = _export(tmp_path / "exp", exams=1)
    for out in (afile, afile / "below"):
        _one_line_error(_cli("simulate", "--exams", "2", "--out", str(out), "--quiet"), str(afile))
        _one_line_error(_cli("ingest", str(export), "--out", str(out), "--quiet"), str(afile))
        _one_line_error(_cli("pretrain", "--data", str(dataset), "--out", str(out), "--quiet", *TINY), str(afile))
    assert afile.read_text() == "not a folder"


@pytest.mark.slow
def test_bad_config_values_and_files_fail_before_anything_is_written(dataset, tmp_path):
    out = tmp_path / "run"
    for over, msg in (("options.lam=-5", "options.lam must be >= 0"), ("lam=-5", "is now 'options.lam'"),
                      ("k=0", "k must be >= 2"),
                      ("train.optim.lr=-0.1", "train.optim.lr must be >= 0")):
        _one_line_error(_cli("pretrain", "--data", str(dataset), "--out", str(out), "--quiet", *TINY, over), msg)
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    _one_line_error(_cli("pretrain", "--config", str(binary), "--data", str(dataset), "--out", str(out)),
                    "not a text file")
    assert not out.exists()


@pytest.mark.slow
def test_resume_refuses_a_changed_run_and_a_fresh_run_clears_stale_outputs(dataset, tmp_path, mlflow_uri):
    out = tmp_path / "run"
    base = ["pretrain", "--data", str(dataset), "--out", str(out), "--quiet", *TINY]
    assert main(base) == 0
    assert (out / "eval" / "model.pt").is_file()
    saved = (out / "config.yaml").read_bytes()
    for change, key in (("options.lam=5", "options.lam was 2.0, now 5.0"), ("method=pica", "method was 'lsd', now 'pica'"),
                        ("model.backbone=resnet10t", "model.backbone was 'resnet18', now 'resnet10t'")):
        _one_line_error(_cli(*base, "--resume", change, env={"MLFLOW_TRACKING_URI": mlflow_uri}), key)
        assert (out / "config.yaml").read_bytes() == saved  # nothing rewritten
    assert main([*base, "--resume", "train.epochs=2"]) == 0  # training longer is a resume of the same run
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2
    assert main([*base, "evaluate_after=false"]) == 0  # a fresh run: the old evaluation must not survive
    assert (out / "model.pt").is_file() and not (out / "eval").exists()


# ------------------------------------------------------------------------------------------ full disk
def _cine_export(root: Path, files: int, frames: int, size: int = 64) -> Path:
    """Multi-frame ultrasound DICOMs: more frames than files, so a per-file space estimate is too low."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    (root / "exam0").mkdir(parents=True)
    for f in range(files):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(root / "exam0" / f"cine{f}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "US", "1.2.3.4", generate_uid()
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation, ds.NumberOfFrames = 7, 0, frames
        ds.PixelData = np.stack([_frame(f * 100 + i, size) for i in range(frames)]).tobytes()
        ds.save_as(root / "exam0" / f"cine{f}.dcm", enforce_file_format=True)
    return root


def test_full_disk_during_ingest_is_one_line_and_leaves_nothing_half_written(tmp_path):
    export = _cine_export(tmp_path / "cine", files=4, frames=40)      # 160 frames x 16 kB = 2.6 MB of cache
    with tiny_disk(tmp_path / "disk", 1024) as disk:
        r = _cli("ingest", str(export), "--out", str(disk / "ds"), "--quiet", "--size", "128")
        _one_line_error(r, "no space left on device", str(disk / "ds"), "MB")
        assert not list((disk / "ds").glob("images.npy*"))
        r = _cli("ingest", str(_export(tmp_path / "many", exams=10, per_exam=10)), "--out", str(disk / "ds2"),
                 "--quiet", "--size", "128")  # 100 files need at least 1.6 MB: refused before decoding
        _one_line_error(r, "not enough disk space", "MB")


def test_a_cache_that_fits_once_is_written_once(tmp_path):
    """The old writer held the cache twice (a part file, then a memory-mapped copy): SIGBUS on a full disk."""
    export = _export(tmp_path / "exp", exams=10, per_exam=10)         # 100 frames x 16 kB = 1.6 MB
    with tiny_disk(tmp_path / "disk", 2600) as disk:
        res = ingest(export, disk / "ds", cfg=IngestConfig(size=128, classes=CLASSES), progress=False)
        assert res.n_frames_kept == 100
        assert open_dataset(disk / "ds").images.shape == (100, 128, 128)
        shutil.rmtree(disk / "ds")


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    """torch.save on a full disk raised RuntimeError('... unexpected pos ...'): now one UsclfError."""
    with tiny_disk(tmp_path / "disk", 256) as disk:
        save_checkpoint(disk / "last.pt", {"w": torch.ones(1000)})
        before = (disk / "last.pt").read_bytes()
        with pytest.raises(UsclfError, match=r"^no space left on device while writing the checkpoint .*last\.pt "
                                             r"\(about 1 MB, \d+ kB free\); the partial file was removed"):
            save_checkpoint(disk / "last.pt", {"w": torch.zeros(2**18)})
        assert sorted(p.name for p in disk.iterdir()) == ["last.pt"]
        assert (disk / "last.pt").read_bytes() == before


def test_pretrain_on_a_full_disk_is_one_line_and_resumes_from_the_last_checkpoint(dataset, tmp_path, mlflow_uri):
    base = ["pretrain", "--data", str(dataset), "--quiet", *TINY, "evaluate_after=false",
            "model.backbone=test_resnet"]                                   # a 4.6 MB checkpoint
    with tiny_disk(tmp_path / "disk", 16 * 1024) as disk:
        out, last = disk / "run", disk / "run" / "checkpoints" / "last.pt"
        assert main([*base, "--out", str(out)]) == 0                        # epoch 1 checkpointed
        good = last.read_bytes()
        first = torch.load(last, weights_only=True)
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 256 * 1024))   # 256 kB left
        r = _cli(*base, "--out", str(out), "--resume", "train.epochs=2")     # epoch 2's checkpoint cannot fit
        _one_line_error(r, "no space left on device while writing the checkpoint", str(last), "--resume")
        assert last.read_bytes() == good
        assert [p.name for p in last.parent.iterdir()] == ["last.pt"]      # no partial temp file
        (disk / "filler").unlink()
        assert main([*base, "--out", str(out), "--resume", "train.epochs=2"]) == 0
        ck = torch.load(last, weights_only=True)
        assert (ck["epoch"], ck["step"]) == (first["epoch"] + 1, 2 * first["step"]) and (out / "model.pt").is_file()
