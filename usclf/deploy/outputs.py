"""Where `usclf export` may write, and how: nothing the user made is ever replaced or deleted.

- `--out` must have the format's extension (`.onnx`; `.pt`/`.pth`/`.ts`/`.torchscript`; a folder without one of
  those for mlflow), must not be the model file, hold it, or lie in its run folder (the folder with the run's
  `config.yaml`), nor be, hold or lie in the `--data` folder.
- `--overwrite` replaces only an export usclf wrote: an ONNX / TorchScript file carrying usclf's export metadata,
  or an MLflow folder whose marker `usclf-export.json` lists every file in it. Anything else: one line, exit 2.
- The export is built in a temporary sibling folder (`.<name>.XXXX.tmp`) and renamed into place; the caller holds
  the output lock (`usclf.locks.output_lock`), so two exports never interleave.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UsclfError

EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}
FILE_EXTENSIONS = {e for v in EXTENSIONS.values() for e in v}
MARKER = "usclf-export.json"
TAG = "usclf-export"


def _inside(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def run_folder(model: Path) -> Path | None:
    """The training run folder of a model file: the nearest of its folder / the folder above (`eval/model.pt`)
    that holds the run's config.yaml; None for a model file outside a run folder."""
    for d in (model.parent, model.parent.parent):
        if (d / "config.yaml").is_file():
            return d
    return None


def check_out(out_arg: str | Path, fmt: str, model: str | Path, data: str | Path | None) -> Path:
    """Refuse an --out export must not write (wrong extension, the model's run folder, the data folder);
    returns it as an absolute path. Nothing is written."""
    if not str(out_arg).strip():
        raise UsclfError("--out is empty: give the file (.onnx / .pt) or folder (mlflow) to write")
    out = Path(os.path.abspath(out_arg))
    suffix = out.suffix.lower()
    if fmt in EXTENSIONS and suffix not in EXTENSIONS[fmt]:
        raise UsclfError(f"--format {fmt} writes a {' / '.join(EXTENSIONS[fmt])} file, but --out {out_arg} ends in "
                         f"'{out.suffix}': name it e.g. {out.with_suffix(EXTENSIONS[fmt][0]).name}")
    if fmt == "mlflow" and suffix in FILE_EXTENSIONS:
        raise UsclfError(f"--format mlflow writes a folder, but --out {out_arg} ends in '{out.suffix}' (a "
                         "model file's extension): choose a folder name")
    m = Path(os.path.abspath(model))
    real, real_model = out.resolve(), m.resolve()
    if _inside(real_model, real):
        raise UsclfError(f"--out {out_arg} is or holds the --model file {model}: choose another --out")
    run = run_folder(m)
    if run is not None and _inside(real, run.resolve()):
        raise UsclfError(f"--out {out_arg} lies in the run folder {run} of --model: write exports outside the "
                         "run folder")
    if data:
        d = Path(data).resolve()
        if _inside(real, d) or _inside(d, real):
            raise UsclfError(f"--out {out_arg} is, holds or lies in the --data folder {data}: choose another --out")
    if not out.parent.is_dir():
        raise UsclfError(f"folder for --out not found: {out.parent}")
    return out


def export_kind(path: Path) -> str | None:
    """'onnx' / 'torchscript' / 'mlflow' for an export usclf wrote at `path` (one it may replace), else None."""
    if path.is_symlink():
        return None
    if path.is_dir():
        return "mlflow" if _own_folder(path) else None
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        return "onnx" if _own_onnx(path) else None
    return "torchscript" if _own_torchscript(path) else None


def _is_tag(text: str | bytes) -> bool:
    try:
        return json.loads(text).get("format") == TAG
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False


def _own_onnx(path: Path) -> bool:
    try:
        import onnx
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a protobuf / not ONNX: not ours
        return False
    return any(p.key == "usclf" and _is_tag(p.value) for p in m.metadata_props)


def _own_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/extra/usclf.json")]
            return len(names) == 1 and _is_tag(z.read(names[0]))
    except (zipfile.BadZipFile, OSError):
        return False


def _own_folder(path: Path) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
        listed = set(marker["files"]) if marker.get("format") == TAG else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if listed is None:
        return False
    found = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()}
    return found - {MARKER} <= listed


def write_marker(folder: Path, meta: dict) -> None:
    """The MLflow folder's marker: usclf wrote it, and these are its files (what --overwrite may replace)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    (folder / MARKER).write_text(json.dumps({"format": TAG, "model_sha1": meta.get("model_sha1"),
                                             "export_format": meta.get("export_format"), "files": files}, indent=1))


def check_replace(out: Path, out_arg: str | Path, fmt: str, overwrite: bool) -> None:
    """An existing --out: refused without --overwrite, and with it unless usclf wrote it (same kind)."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise UsclfError(f"{out_arg} exists: choose another --out or pass --overwrite")
    kind = export_kind(out)
    if kind is None:
        what = "folder" if out.is_dir() else "file"
        raise UsclfError(f"{out_arg} is a {what} usclf export did not write (no usclf export marker): --overwrite "
                         "replaces only usclf's own exports; choose another --out")
    if kind != fmt:
        raise UsclfError(f"{out_arg} is a usclf {kind} export, not {fmt}: choose another --out")


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary sibling folder of `out`; yields the path to build the export at (`<tmp>/<name>`); removed
    afterwards, whatever happens."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise UsclfError(f"cannot write {out}: {e.strerror}") from None
    try:
        yield tmp / out.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(built: Path, out: Path) -> None:
    """Move the finished export into place; an older usclf export there (checked by `check_replace`) goes."""
    try:
        if out.is_dir() and not out.is_symlink():
            old = built.parent / (built.name + ".old")
            os.rename(out, old)     # removed with the staging folder
            try:
                os.rename(built, out)
            except OSError:
                os.rename(old, out)
                raise
        else:
            os.replace(built, out)
    except OSError as e:
        raise UsclfError(f"cannot write {out}: {e.strerror}") from None
