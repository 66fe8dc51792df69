"""One writer per output: exclusive `flock` locks on an output path, and a serialising lock for an MLflow sqlite store.

`output_lock(out, command)` holds `.<name>.lock` beside `out` (in its parent folder) for the whole run: a second
usclf process on the same `out` stops with one line (exit 2) before it writes anything. The lock file records the
holder's pid and command, for the second process's message, and is removed when the holder ends normally; the
OS drops the lock whatever way a process ends (kill -9 included), so a dead run never blocks the next one (a file
left by a killed run is simply reused).

`lock_file(path, ...)` is the primitive (predict keeps its lock in `<out>.parts/lock`); `store_lock(uri)` is a
blocking lock beside an `sqlite:///` DB file so that two processes never create or migrate one DB at once.
"""
from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsclfError
from .paths import sqlite_path

try:
    import fcntl
except ImportError:         # not POSIX: runs are not locked against each other
    fcntl = None

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def lock_path(out: str | Path) -> Path:
    """The lock file of an output: `.<name>.lock` in the output's parent folder."""
    p = Path(os.path.abspath(out))
    return p.parent / f".{p.name or 'out'}.lock"


def _open(path: Path, what: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsclfError(f"cannot write {what}: {path.parent}: {e.strerror}") from None


def _same_file(fd: int, path: Path) -> bool:
    """The locked file is still the one at `path` (a finishing holder may have removed it meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _record(fd: int, command: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}".encode(), 0)
    except OSError:
        pass            # the pid only improves a second run's message; a full disk must not stop this one


def _holder(fd: int, command: str) -> tuple[str, str]:
    text = os.pread(fd, 200, 0).decode(errors="replace").split()
    return (text[0] if text else "unknown"), (" ".join(text[1:]) if len(text) > 1 else command)


@contextmanager
def lock_file(path: str | Path, out: str | Path, command: str, remove: bool = False) -> Iterator[None]:
    """Hold `path` exclusively (non-blocking) while the body runs; UsclfError naming the holder if another process
    holds it. `remove`: delete the lock file on release (safe: a waiter checks it locked the file at `path`)."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    while True:
        fd = _open(path, str(out))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in _BUSY:
                os.close(fd)
                raise
            pid, cmd = _holder(fd, command)
            os.close(fd)
            raise UsclfError(f"{out} is being written by another usclf {cmd} (pid {pid}); wait for it "
                             "or choose another --out") from None
        if _same_file(fd, path):
            break
        os.close(fd)            # locked a file its holder removed on the way out: lock the new one
    try:
        _record(fd, command)
        yield
    finally:
        if remove:
            try:
                os.unlink(path)
            except OSError:
                pass
        os.close(fd)


@contextmanager
def output_lock(out: str | Path, command: str, shown: str | Path | None = None) -> Iterator[None]:
    """One writer per output: hold `lock_path(out)`. Parent folders are created if needed and removed again
    when the run leaves them empty (a run refused on its arguments leaves no trace)."""
    path = lock_path(out)
    made = [q for q in (path.parent, *path.parent.parents) if not q.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsclfError(f"cannot write {shown or out}: {e.strerror}") from None
    try:
        with lock_file(path, shown or out, command, remove=True):
            yield
    finally:
        for q in made:          # deepest first; a folder the run wrote into is not empty and stays
            try:
                q.rmdir()
            except OSError:
                break


@contextmanager
def store_lock(uri: str | None, timeout: float = 600.0) -> Iterator[None]:
    """Serialise writers of one MLflow sqlite store (`<db>.lock` beside the DB; waits up to `timeout` s).
    Other stores (a tracking server) serialise themselves: no lock."""
    db = sqlite_path(uri) if uri else None
    if db is None or fcntl is None:
        yield
        return
    path = db.with_name(db.name + ".lock")
    above = next((q for q in path.absolute().parents if os.path.lexists(q)), None)
    if above is not None and not above.is_dir():
        raise UsclfError(f"cannot write the MLflow store {uri}: {above} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsclfError(f"cannot write the MLflow store {uri}: {e.strerror} ({path.parent})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in _BUSY:
                    raise
                if time.monotonic() > deadline:
                    raise UsclfError(f"the MLflow store {uri} stayed busy for {timeout:.0f} s (another usclf "
                                     "process holds it); try again") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
