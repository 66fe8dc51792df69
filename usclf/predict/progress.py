"""Guards around one `usclf predict` output: --out checks, the run lock, the folder walk and the no-space message.

The lock is an exclusive `flock` on `<out>.parts/lock` held for the whole run: a second run on the same output
stops with one line instead of interleaving rows. The OS drops the lock when the process ends, however it ends
(kill -9 included), so a dead run never blocks the next one; the file itself stays (with the last holder's pid).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from ..errors import UsclfError
from ..locks import lock_file

LOCK = "lock"


def check_out(out: Path, exams: Path, state: Path) -> None:
    """Refuse an --out predict cannot or must not write (or whose inventory would overwrite a foreign file),
    before anything is written."""
    p = out.parent
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UsclfError(f"cannot write {out}: {p} is not a folder")
    if out.exists() and not out.is_file():
        raise UsclfError(f"--out {out} exists and is not a regular file: choose another --out")
    if os.path.lexists(state) and not state.is_dir():
        raise UsclfError(f"{state} is in the way (predict keeps its resume state there): move it or choose "
                         "another --out")
    fresh = not state.is_dir()
    if fresh and out.exists():
        raise UsclfError(f"{out} exists but has no resume state ({state.name}/): delete it or choose another --out")
    if exams.is_dir() or (os.path.lexists(exams) and (fresh or not exams.is_file())):
        raise UsclfError(f"{exams} is in the way (predict writes the per-exam inventory there): move it or "
                         "choose another --out")


@contextmanager
def output_lock(state: Path, out: Path) -> Iterator[None]:
    """Hold `<state>/lock` exclusively (non-blocking) while the body runs; UsclfError if another process holds it."""
    state.mkdir(parents=True, exist_ok=True)
    with lock_file(state / LOCK, out, "predict"):
        yield


# ----------------------------------------------------------------------------------------------- walk
@dataclass
class Unit:
    name: str               # folder relative to the input root ('.' for the root); 'x/' for a folder-level row
    files: list[str] = field(default_factory=list)    # names of the folder's own files
    note: str = ""          # folder-level row instead of files: empty exam folder, symlink not followed, ...

    def key(self, name: str) -> str:
        """A file's path relative to the input root (its key in the output and the progress log)."""
        return name if self.name == "." else f"{self.name}/{name}"


def units_left(units: list[Unit], done_files: set[str], done_units: set[str] = frozenset()) -> list[Unit]:
    """`units` less what is recorded: folders with their files not in `done_files` (folders in `done_units`,
    and folder-level rows recorded under their name, count as done as a whole); empty ones dropped."""
    from ..data.ingest import norm_rel

    todo = []
    for u in units:
        if u.note:
            if u.name not in done_files and u.name not in done_units:
                todo.append(u)
        elif u.name not in done_units:
            left = [f for f in u.files if norm_rel(u.key(f)) not in done_files]
            if left:
                todo.append(replace(u, files=left))
    return todo


def walk_units(root: Path, exclude: set[Path]) -> list[Unit]:
    """Folders holding files in ingest's walk order (sorted, top-down), then empty top-level exam folders.

    Symlinked folders are followed under their own name, each real folder once: a link to a folder inside
    the input (read there), to the input or above it (a loop), or to one already read gets a row instead.
    """
    names = {p.name for p in exclude}
    real_root = os.path.realpath(root)
    seen, tops, units, stack = {real_root: "."}, {}, [], [(root, "")]
    while stack:
        d, rel = stack.pop()
        if rel:
            real = os.path.realpath(d)
            why = _not_followed(d, real, real_root, seen)
            if why:
                units.append(Unit(rel + "/", note=why))
                continue
            seen[real] = rel
            if "/" not in rel:
                tops[rel] = real
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise UsclfError(f"input folder not readable: {root}: {e.strerror}") from None
            units.append(Unit(rel + "/", note=f"folder not readable: {e.strerror}"))
            continue
        files, subs = [], []
        for e in entries:
            if e.name in names and Path(e.path).resolve() in exclude:
                continue
            (subs if e.is_dir() else files).append(e.name)
        if files:
            units.append(Unit(rel or ".", files))
        stack.extend((d / n, f"{rel}/{n}" if rel else n) for n in reversed(subs))
    with_files = {u.name.split("/")[0] for u in units if u.files}
    holders = {str(q) for e in exclude for q in e.parents}     # a folder holding only our output is no exam
    return units + [Unit(n + "/", note="empty exam folder") for n, real in sorted(tops.items())
                    if n not in with_files and real not in holders]


def _not_followed(d: Path, real: str, real_root: str, seen: dict[str, str]) -> str:
    if d.is_symlink():
        inside = os.path.commonpath([real, real_root])
        if inside == real:
            return "symlinked folder not followed: it points to the input folder or above it (a loop)"
        if inside == real_root:
            where = Path(os.path.relpath(real, real_root)).as_posix()
            return f"symlinked folder not followed: same folder as {where}/"
    if real in seen:
        return f"symlinked folder not followed: same folder as {seen[real]}/"
    return ""


# ----------------------------------------------------------------------------------------------- no space
def no_space_message(out: Path, recorded: tuple[int, int, int], files_left: int, n_columns: int,
                     merge: bool) -> str:
    """The one-line ENOSPC report with a rough size of what is still to write (from the rows written so far)."""
    size, rows, files = recorded
    per_row = size / rows if rows else 60 + 20 * n_columns
    need = per_row * (rows / files if files else 1.0) * files_left
    if merge:                  # parquet: the merged output is a second copy of all parts
        need += size + need
    try:
        st = os.statvfs(out.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    mb = max(1, math.ceil((need + 64 * 1024 - free) / 1e6))
    return (f"no space left on device while writing {out} (needs about {mb} MB more); the rows written so far "
            "are kept and a rerun resumes")
