"""Re-run the cases of issue 24's "Why" (export, registry, DICOM SR, suggest, studies, concurrent runs) against
the current code and classify each: ok / traceback / silent-wrong / lost / leak / hang / poor-message / skipped.

    python pipelines/probe_hardening.py --out docs/reliability_probe.md

One small world is built once (8 simulated DICOM exams at 48 px, ingested at 32 px, one finetune of one epoch);
every case then runs the real `usclf` command line (or `python pipelines/NAME.py`) as a subprocess with a
timeout, and looks at its exit code, stderr and what is left on disk. The table goes to stdout and, as Markdown
with the CSV beside it, to --out. The cases live in probe_cases.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
CASES: dict[str, tuple[str, str, Callable[[World], tuple[str, str]]]] = {}


def case(issue: str, what: str):
    def deco(fn):
        CASES[fn.__name__.replace("_", "-")] = (issue, what, fn)
        return fn
    return deco



OUTCOMES = ("ok", "traceback", "silent-wrong", "lost", "leak", "hang", "poor-message", "skipped")


@dataclass
class Run:
    """One finished (or timed-out) subprocess."""
    rc: int | None
    out: str
    err: str
    secs: float
    hang: bool = False

    @property
    def lines(self) -> list[str]:
        return [x for x in self.err.strip().splitlines() if x.strip()]


@dataclass
class World:
    """The shared inputs of every case: raw exams, datasets, the one trained model, an MLflow DB."""
    root: Path
    raw: Path = field(init=False)
    ds: Path = field(init=False)
    ds64: Path = field(init=False)
    ft: Path = field(init=False)
    uri: str = field(init=False)

    def __post_init__(self):
        self.raw, self.ds, self.ds64 = self.root / "raw", self.root / "ds", self.root / "ds64"
        self.ft, self.uri = self.root / "ft", f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def model(self) -> Path:
        return self.ft / "model.pt"

    def case_dir(self, name: str) -> Path:
        d = self.root / "cases" / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d


def env(uri: str | None = None) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if uri:
        e["MLFLOW_TRACKING_URI"] = uri
    return e


def cmd(args) -> list[str]:
    """`usclf ARGS`, or `python pipelines/NAME.py ARGS` when the first argument is a pipelines/ script."""
    args = [str(a) for a in args]
    if args and args[0].startswith("pipelines/"):
        return [sys.executable, str(REPO / args[0]), *args[1:]]
    return [sys.executable, "-m", "usclf.cli", *args]


def start(args, cwd: Path, uri: str | None) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(cmd(args), cwd=cwd, env=env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True), time.monotonic()


def finish(p: subprocess.Popen, t0: float, timeout: float) -> Run:
    try:
        out, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        return Run(p.returncode, out, err, time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        return Run(None, out, err, time.monotonic() - t0, hang=True)


def usclf(w: World, *args, cwd: Path | None = None, timeout: float = 180, uri: str | None = "") -> Run:
    """One subprocess of the real CLI (`uri`: MLFLOW_TRACKING_URI, default the world's DB)."""
    return finish(*start(args, cwd or w.root, w.uri if uri == "" else uri), timeout)


def together(w: World, *commands, cwd: Path | None = None, timeout: float = 900, uri: str | None = "") -> list[Run]:
    """Several subprocesses started at once (two writers racing)."""
    procs = [start(a, cwd or w.root, w.uri if uri == "" else uri) for a in commands]
    return [finish(p, t0, timeout) for p, t0 in procs]


def crashed(r: Run) -> tuple[str, str] | None:
    """hang / traceback, or None when the process ended the way a usclf command ends."""
    if r.hang:
        return "hang", f"no answer in {r.secs:.0f} s"
    if "Traceback" in r.err or r.rc not in (0, 2):
        return "traceback", f"exit {r.rc}: {(r.lines or ['(no stderr)'])[-1][:160]}"
    return None


def refused(r: Run, *parts: str) -> tuple[str, str]:
    """ok when the command stopped with one line naming every `part`, exit 2."""
    bad = crashed(r)
    if bad:
        return bad
    if r.rc == 0:
        return "silent-wrong", "exit 0: not refused"
    if len(r.lines) != 1:
        return "poor-message", f"{len(r.lines)} lines on stderr: {r.lines[-1][:160]}"
    if not all(p in r.lines[0] for p in parts):
        return "poor-message", r.lines[0][:200]
    return "ok", r.lines[0][:200]


def tree(d: Path) -> dict[str, bytes | None]:
    """Every path below `d` with its bytes: equal before and after means nothing was lost."""
    if not d.exists():
        return {}
    if d.is_file():
        return {".": d.read_bytes()}
    return {p.relative_to(d).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(d.rglob("*"))}


def kept(before: dict, d: Path, result: tuple[str, str]) -> tuple[str, str]:
    """`result`, unless something the user had in `d` changed or went missing (then: lost)."""
    after = tree(d)
    gone = [k for k, v in before.items() if after.get(k, b"<missing>") != v]
    return ("lost", f"{len(gone)} path(s) changed or deleted, e.g. {gone[0]}") if gone else result


def leftovers(folder: Path, *names: str) -> list[str]:
    """Half-written things in `folder`: temp siblings, lock files, or the given names."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")) or p.name in names)


@contextmanager
def readonly_dir(path: Path):
    """A real read-only folder (a read-only tmpfs; needs root), or None where it cannot be made."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    try:
        yield path if r.returncode == 0 else None
    finally:
        if r.returncode == 0 and subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def small_model(w: World, path: Path, classes: list[str], f1: float) -> Path:
    """An untrained model file of another class list (a model "from another dataset"), valid F1 `f1`."""
    import torch

    from ..data.cache import open_dataset
    from ..data.transforms import AugmentConfig
    from ..models.heads import build_classifier
    from ..models.modelfile import ModelInfo, save_model_file
    from ..stages.common import preprocess_meta
    torch.manual_seed(0)
    m = build_classifier("resnet18", "multilabel", num_classes=len(classes)).eval()
    pre = preprocess_meta(open_dataset(w.ds), AugmentConfig(size=32))
    return save_model_file(path, m, ModelInfo(classes, "finetune", "multilabel", preprocess=pre,
                                              thresholds=[0.5] * len(classes), provenance={"best_val_f1": f1}))


def build_world(root: Path) -> World:
    """8 simulated DICOM exams -> a 32 px and a 64 px dataset -> one finetune of one epoch (the shared model)."""
    w = World(root)
    steps = [("simulate", "--exams", 8, "--out", w.raw, "--format", "dicom", "--size", 48, "--seed", 3),
             ("ingest", w.raw, "--out", w.ds, "--labels", w.raw / "labels.csv", "--size", 32,
              "split.unlabeled=0.4", "split.train=0.2", "split.val=0.2", "split.test=0.2"),
             ("ingest", w.raw, "--out", w.ds64, "--labels", w.raw / "labels.csv", "--size", 64,
              "split.unlabeled=0.4", "split.train=0.2", "split.val=0.2", "split.test=0.2"),
             ("finetune", "--data", w.ds, "--out", w.ft, "--init", "random", *TRAIN)]
    for step, done in zip(steps, (w.raw / "labels.csv", w.ds, w.ds64, w.model)):
        if done.exists():     # a --work folder of an earlier probe: its world is reused
            continue
        r = usclf(w, *step, "--quiet", timeout=900)
        if r.rc != 0:
            raise SystemExit(f"probe: building the world failed at `usclf {step[0]}`: {r.err.strip()[-400:]}")
    return w


TRAIN = ["augment.size=32", "data.batch_size=4", "figures=false", "train.epochs=1"]


def report(rows: list[dict], secs: float, out: Path | None, merge: bool = False, order=()) -> str:
    """The table as Markdown (written to `out`, the CSV beside it) with the counts per outcome; `merge`: the rows
    replace the same cases of the report already at `out` (table in `order`)."""
    df = pd.DataFrame(rows, columns=["case", "issue", "what", "outcome", "secs", "detail"])
    when = f" ({secs / 60:.1f} min on this machine)"
    if merge:
        when = f" (re-run now with --only: {', '.join(df['case'])}; the others from the last full run)"
    if merge and out and out.with_suffix(".csv").is_file():   # --only: update these cases in the last report
        old = pd.read_csv(out.with_suffix(".csv"), keep_default_na=False)
        df = pd.concat([old[~old["case"].isin(df["case"])], df]).set_index("case").reindex(
            [c for c in order if c in set(old["case"]) | set(df["case"])]).reset_index()
    counts = df["outcome"].value_counts()
    summary = ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES if counts.get(o, 0) or o == "ok")
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    md = ["# Reliability probe (issue 24)", "",
          "Written by `python pipelines/probe_hardening.py` (usclf/studies/probe_hardening.py, cases in "
          "probe_cases.py): every case of issue 24's \"Why\" re-run as a real `usclf` (or `python pipelines/...`) "
          "process on 8 simulated DICOM exams and one tiny finetuned model.", "",
          f"**{len(df)} cases: {summary}**{when}.", "",
          "| case | issue | what | outcome | s | detail |", "|---|---|---|---|---|---|"]
    md += [f"| {r.case} | {r.issue} | {cell(r.what)} | {r.outcome} | {r.secs:.0f} | {cell(r.detail)} |"
           for r in df.itertuples()]
    text = "\n".join(md) + "\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        df.to_csv(out.with_suffix(".csv"), index=False)
    return text
