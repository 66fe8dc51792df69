"""Issue 24's cases for export, the registry, training stages, config values and studies: each a function
World -> (outcome, detail) registered with `@case` and run by probe_hardening.py (the SR and suggest cases are in
probe_sr.py). Every case runs the real command line as a subprocess; `refused` wants one line and exit 2,
`kept` turns any change to the user's files into "lost"."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from .probe_hardening import (TRAIN, World, case, crashed, env, kept, leftovers, readonly_dir, refused,
                              small_model, together, tree, usclf)


def user_runs(d: Path) -> Path:
    """A folder of the user's own runs and notes."""
    (d / "run1").mkdir(parents=True)
    (d / "run1" / "notes.txt").write_text("my notes")
    (d / "results.csv").write_text("run,f1\nrun1,0.7\n")
    return d


def run_copy(w: World, d: Path) -> Path:
    """A copy of the trained run folder (cases that could destroy it work on the copy)."""
    shutil.copytree(w.ft, d / "ft", ignore=shutil.ignore_patterns("checkpoints", "eval"))
    return d / "ft"


def export(w: World, out, *more, model=None, **kw):
    return usclf(w, "export", "--model", model or w.model, "--out", out, "--quiet", *more, **kw)


# ---- data lost ----------------------------------------------------------------------------------------------
@case("lost", "export --format mlflow --out myruns/ --overwrite (a folder of the user's runs)")
def export_overwrite_users_folder(w):
    d = user_runs(w.case_dir("overwrite-users") / "myruns")
    before = tree(d)
    return kept(before, d, refused(export(w, d, "--format", "mlflow", "--overwrite"), "did not write"))


@case("lost", "export --model ft/model.pt --out ft/model.pt --overwrite")
def export_over_its_model(w):
    ft = run_copy(w, w.case_dir("over-model"))
    before = tree(ft)
    r = export(w, ft / "model.pt", "--format", "torchscript", "--overwrite", model=ft / "model.pt")
    return kept(before, ft, refused(r, "model"))


@case("lost", "export --format mlflow --out ft --overwrite (the model's run folder)")
def export_over_its_run_folder(w):
    ft = run_copy(w, w.case_dir("over-run"))
    before = tree(ft)
    return kept(before, ft, refused(export(w, ft, "--format", "mlflow", "--overwrite", model=ft / "model.pt")))


@case("lost", "usclf study demo --out EXISTING --exams 0")
def study_demo_existing_out(w):
    d = user_runs(w.case_dir("demo-existing") / "mine")
    before = tree(d)
    return kept(before, d, refused(usclf(w, "study", "demo", "--out", d, "--exams", "0"), "--exams"))


@case("lost", "two `usclf finetune` into one --out at once, fresh MLflow DB (seeds 1 and 2)")
def two_finetunes_one_out(w):
    d = w.case_dir("two-finetunes")
    uri = f"sqlite:///{d / 'fresh' / 'mlflow.db'}"
    runs = together(w, *[("finetune", "--data", w.ds, "--out", d / "ftc", "--init", "random", "--quiet",
                          "--seed", s, "--tracking-uri", uri, *TRAIN) for s in (1, 2)])
    for r in runs:
        if crashed(r):
            return crashed(r)
    rcs = sorted(r.rc for r in runs)
    if rcs == [0, 0]:
        return "lost", "both exit 0 into one --out: one model silently replaced the other"
    if rcs != [0, 2]:
        return "silent-wrong", f"exit codes {rcs}: {(runs[0].lines or [''])[-1][:160]}"
    loser = next(r for r in runs if r.rc == 2)
    seed = 1 if runs[0].rc == 0 else 2
    import yaml

    from ..models.modelfile import read_model_info
    cfg = yaml.safe_load((d / "ftc" / "config.yaml").read_text())
    got = read_model_info(d / "ftc" / "model.pt").provenance.get("seed", cfg["train"]["seed"])
    if cfg["train"]["seed"] != seed or got != seed:
        return "lost", f"config.yaml seed {cfg['train']['seed']}, model seed {got}, winner's seed {seed}"
    return refused(loser, "is being written by another usclf finetune")


# ---- patients mixed, test leaked ---------------------------------------------------------------------------
@case("leak", "finetune test_split=train (a test score on training images)")
def finetune_test_split_train(w):
    d = w.case_dir("test-split")
    r = usclf(w, "finetune", "--data", w.ds, "--out", d / "o", "--init", "random", "--quiet", *TRAIN,
              "test_split=train")
    out = refused(r, "test_split")
    return ("leak", "exit 0: a test F1 on training images") if out[0] == "silent-wrong" else out


@case("leak", "semisup test_split=unlabeled (a split it trains on)")
def semisup_test_split_unlabeled(w):
    d = w.case_dir("test-split-semi")
    r = usclf(w, "semisup", "--data", w.ds, "--out", d / "o", "--init", "random", "--quiet", *TRAIN,
              "test_split=unlabeled")
    out = refused(r, "test_split")
    return ("leak", "exit 0: a test F1 on training images") if out[0] == "silent-wrong" else out


# ---- silently wrong -----------------------------------------------------------------------------------------
def champion(w: World, name: str) -> str | None:
    from mlflow import MlflowClient
    try:
        return str(MlflowClient(w.uri).get_model_version_by_alias(name, "champion").version)
    except Exception:  # noqa: BLE001 - no alias, no model
        return None


@case("silent-wrong", "register the same model twice: `champion` must not move")
def register_same_model_twice(w):
    d = w.case_dir("register-twice")
    for out in ("a", "b"):
        r = export(w, d / out, "--format", "mlflow", "--register", "organs", timeout=300)
        if r.rc != 0:
            return crashed(r) or ("silent-wrong", f"export {out} exit {r.rc}: {(r.lines or [''])[-1][:160]}")
    ch = champion(w, "organs")
    return ("ok", "champion stays version 1") if ch == "1" else ("silent-wrong", f"champion moved to {ch}")


@case("silent-wrong", "a 3-class model (val F1 0.99) registered into the 7-class `organs`")
def register_other_classes(w):
    d = w.case_dir("register-3class")
    m3 = small_model(w, d / "m3.pt", ["a", "b", "c"], 0.99)
    before = champion(w, "organs")
    out = refused(export(w, d / "x", "--format", "mlflow", "--register", "organs", model=m3), "classes")
    if champion(w, "organs") != before:
        return "silent-wrong", f"champion moved from {before} to {champion(w, 'organs')}"
    return ("silent-wrong", f"export left {d / 'x'}") if out[0] == "ok" and (d / "x").exists() else out


@case("silent-wrong", "export --register ''")
def register_empty_name(w):
    d = w.case_dir("register-empty")
    return refused(export(w, d / "x", "--format", "mlflow", "--register", ""), "--register")


@case("silent-wrong", "stray key=value to export (tol=1)")
def stray_export(w):
    return refused(export(w, w.case_dir("stray-export") / "x.onnx", "--format", "onnx", "tol=1"), "tol=1")


@case("silent-wrong", "stray key=value to predict (batch_size=8)")
def stray_predict(w):
    d = w.case_dir("stray-predict")
    return refused(usclf(w, "predict", "--model", w.model, "--input", w.raw, "--out", d / "p.csv", "--quiet",
                         "batch_size=8"), "batch_size=8")


@case("silent-wrong", "export --format torchscript --out x.onnx")
def torchscript_named_onnx(w):
    d = w.case_dir("ts-onnx")
    out = refused(export(w, d / "x.onnx", "--format", "torchscript"), ".onnx")
    return ("silent-wrong", "x.onnx written") if (d / "x.onnx").exists() else out


# ---- hang ---------------------------------------------------------------------------------------------------
@case("hang", "export --register NAME --tracking-uri http://127.0.0.1:9 (no server)")
def register_no_server(w):
    d = w.case_dir("no-server")
    base = export(w, d / "y", "--format", "mlflow", "--register", "")  # the same start-up, refused at once
    r = export(w, d / "x", "--format", "mlflow", "--register", "n", "--tracking-uri", "http://127.0.0.1:9",
               timeout=base.secs + 120)
    out = refused(r, "not reachable")
    if out[0] == "ok" and r.secs > base.secs + 20:
        return "hang", f"{r.secs:.0f} s before the error ({base.secs:.0f} s for a refusal at start-up)"
    return ("silent-wrong", f"left {leftovers(d, 'x')}") if out[0] == "ok" and leftovers(d, "x") else out


# ---- tracebacks ---------------------------------------------------------------------------------------------
@case("traceback", "export --out into a read-only folder")
def export_readonly_out(w):
    with readonly_dir(w.case_dir("ro-export") / "ro") as ro:
        return refused(export(w, ro / "x.onnx", "--format", "onnx"), "cannot write") if ro else \
            ("skipped", "cannot mount a read-only tmpfs here")


@case("traceback", "export --out . --overwrite (in a folder of the user's files)")
def export_dot_out(w):
    d = user_runs(w.case_dir("dot-out") / "cwd")
    before = tree(d)
    return kept(before, d, refused(export(w, ".", "--format", "mlflow", "--overwrite", cwd=d), "."))


@case("traceback", "two exports to one --out at once")
def two_exports_one_out(w):
    d = w.case_dir("two-exports")
    runs = together(w, *[("export", "--model", w.model, "--out", d / "x.onnx", "--format", "onnx", "--quiet")] * 2,
                    timeout=300)
    for r in runs:
        if crashed(r):
            return crashed(r)
    if sorted(r.rc for r in runs) != [0, 2] or not (d / "x.onnx").is_file():
        state = "kept" if (d / "x.onnx").is_file() else "missing"
        return "silent-wrong", f"exit codes {[r.rc for r in runs]}, x.onnx {state}"
    out = refused(next(r for r in runs if r.rc == 2), "x.onnx")
    return ("silent-wrong", f"left {leftovers(d)}") if out[0] == "ok" and leftovers(d) else out


@case("traceback", "export --register with an unwritable sqlite URI (below a file)")
def register_unwritable_sqlite(w):
    d = w.case_dir("bad-sqlite")
    (d / "file").write_text("x")
    r = export(w, d / "x", "--format", "mlflow", "--register", "n", "--tracking-uri", f"sqlite:///{d}/file/m.db")
    out = refused(r, "MLflow store")
    return ("silent-wrong", f"left {leftovers(d, 'x')}") if out[0] == "ok" and leftovers(d, "x") else out


@case("traceback", "export --register organs --alias latest")
def register_alias_latest(w):
    d = w.case_dir("alias-latest")
    out = refused(export(w, d / "x", "--format", "mlflow", "--register", "organs", "--alias", "latest"), "latest")
    return ("silent-wrong", "export written") if out[0] == "ok" and (d / "x").exists() else out


@case("traceback", "two first registrations into a fresh sqlite DB at once")
def two_first_registrations(w):
    d = w.case_dir("two-registrations")
    uri = f"sqlite:///{d / 'fresh' / 'mlflow.db'}"
    runs = together(w, *[("export", "--model", w.model, "--out", d / x, "--format", "mlflow", "--quiet",
                          "--register", "race", "--tracking-uri", uri) for x in "ab"], timeout=600, uri=uri)
    for r in runs:
        if crashed(r) or r.rc != 0:
            return crashed(r) or ("silent-wrong", f"exit {r.rc}: {(r.lines or [''])[-1][:160]}")
    from mlflow import MlflowClient
    n = len(MlflowClient(uri).search_model_versions("name='race'"))
    return ("ok", "both registered (2 versions)") if n == 2 else ("lost", f"{n} version(s) of 2 registrations")


@case("traceback", "finetune labeled_ids=EMPTY.csv (0 bytes)")
def finetune_empty_labeled_ids(w):
    d = w.case_dir("ft-empty")
    (d / "l.csv").write_text("")
    return refused(usclf(w, "finetune", "--data", w.ds, "--out", d / "o", "--init", "random", "--quiet", *TRAIN,
                         f"labeled_ids={d / 'l.csv'}"), "empty")


def _finetune_config(w: World, name: str, text: str | None, *over: str):
    d = w.case_dir(name)
    extra = []
    if text is not None:
        (d / "c.yaml").write_text(textwrap.dedent(text))
        extra = ["--config", d / "c.yaml"]
    return usclf(w, "finetune", "--data", w.ds, "--out", d / "o", "--init", "random", "--quiet", *extra, *over)


@case("traceback", "a list where a number is expected, in YAML (train: {epochs: [1, 2]})")
def yaml_list_for_number(w):
    return refused(_finetune_config(w, "yaml-list", "train:\n  epochs: [1, 2]\n"), "train.epochs")


@case("traceback", "a list as an override (train.epochs=[1,2])")
def override_list(w):
    return refused(_finetune_config(w, "ovr-list", None, "train.epochs=[1,2]"), "train.epochs")


@case("traceback", "a mapping as an override (train.optim.lr={a: 1})")
def override_mapping(w):
    return refused(_finetune_config(w, "ovr-map", None, "train.optim.lr={a: 1}"), "train.optim.lr")


@case("traceback", "finetune --seed -1")
def seed_negative(w):
    return refused(_finetune_config(w, "seed", None, "--seed", "-1"), "seed")


def _study_bad_exams(w: World, name: str, *args) -> tuple[str, str]:
    d = w.case_dir(f"study-{name}")
    out = refused(usclf(w, *args, "--out", d / "o", "--exams", "0"), "--exams")
    return ("silent-wrong", "created --out") if out[0] == "ok" and (d / "o").exists() else out


@case("traceback", "usclf study cluster-check --exams 0")
def study_cluster_check_exams(w):
    return _study_bad_exams(w, "cc", "study", "cluster-check")


@case("traceback", "usclf study semisup-check --exams 0")
def study_semisup_check_exams(w):
    return _study_bad_exams(w, "sc", "study", "semisup-check")


@case("traceback", "usclf study demo --exams 0 (new --out)")
def study_demo_exams(w):
    return _study_bad_exams(w, "demo", "study", "demo")


@case("traceback", "python pipelines/cluster_check.py --exams 0 (a study run as a script)")
def pipeline_cluster_check_exams(w):
    return _study_bad_exams(w, "pipe-cc", "pipelines/cluster_check.py")


@case("traceback", "usclf study evidence-report --run missing")
def evidence_report_missing(w):
    d = w.case_dir("evidence-report")
    (d / "docs").mkdir()
    out = refused(usclf(w, "study", "evidence-report", "--run", d / "missing", "--out", d / "docs" / "r.md"),
                  "missing")
    left = [p.name for p in (d / "docs").iterdir()]
    return ("silent-wrong", f"left {left}") if out[0] == "ok" and left else out


# ---- one writer per output: studies run as scripts (the brief's item 2) -----------------------------------------
HOLDER = """import sys, time
from usclf.locks import output_lock
with output_lock(sys.argv[1], "study evidence"):
    print("locked", flush=True)
    time.sleep(600)
"""


def held(w: World, out: Path, *args) -> tuple[str, str]:
    """`args` run while another process holds the lock of `out`: one line, exit 2, nothing written."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert p.stdout.readline().strip() == "locked"
        res = refused(usclf(w, *args, timeout=120), "is being written by another usclf study evidence")
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    return ("silent-wrong", f"wrote {out}") if res[0] == "ok" and out.exists() else res


@case("lost", "python pipelines/evidence.py out=X while another study writes X")
def pipeline_evidence_held_out(w):
    out = w.case_dir("pipe-evidence") / "ev"
    return held(w, out, "pipelines/evidence.py", f"out={out}", "--quiet")


@case("lost", "python pipelines/cluster_check.py --out X while another study writes X")
def pipeline_cluster_check_held_out(w):
    out = w.case_dir("pipe-cc-held") / "cc"
    return held(w, out, "pipelines/cluster_check.py", "--out", out, "--exams", 20)


@case("lost", "usclf study evidence out=X while another study writes X")
def study_evidence_held_out(w):
    out = w.case_dir("study-evidence") / "ev"
    return held(w, out, "study", "evidence", f"out={out}", "--quiet")


# ---- poor messages ------------------------------------------------------------------------------------------
@case("poor-message", "a text file as --model")
def text_file_as_model(w):
    d = w.case_dir("text-model")
    (d / "m.pt").write_text("hello, I am not a model\n")
    return refused(export(w, d / "x.onnx", "--format", "onnx", model=d / "m.pt"), "not a usclf model file")


@case("poor-message", "finetune --config DIR")
def config_is_folder(w):
    d = w.case_dir("config-dir")
    return refused(usclf(w, "finetune", "--config", d, "--data", w.ds, "--out", d / "o", "--quiet"), "folder")

