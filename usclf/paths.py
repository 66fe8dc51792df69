"""Output paths checked before anything is written: one clear line instead of a traceback (a read-only folder
included: proven writable before minutes of inference, for suggest --out and predict --dicom-sr)."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UsclfError


def check_out_dir(path: str | Path, what: str = "--out") -> Path:
    """`path` must be a folder or not exist yet, and no part of it may be a regular file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsclfError(f"{what} {p} is a file, not a folder; choose a folder")
    _no_file_above(p, what)
    return p


def check_writable_dir(out: Path, what: str = "--out") -> Path:
    """Prove a file can be written in folder `out` (or, while it does not exist, in its nearest existing parent)
    before any work, creating nothing; one line if not."""
    check_out_dir(out, what)
    where = next(p for p in [out, *out.absolute().parents] if p.exists())
    try:
        fd, probe = tempfile.mkstemp(prefix=".usclf-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsclfError(f"cannot write into {what} {out}: {e.strerror or e}") from None
    return out


def _no_file_above(p: Path, what: str) -> None:
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsclfError(f"{what} {p} sits below {parent}, which is a file, not a folder")
            return


def need_space(folder: str | Path, nbytes: int, what: str) -> None:
    """One-line error when the file system of `folder` has less than `nbytes` free."""
    free = shutil.disk_usage(Path(folder)).free
    if free < nbytes:
        raise UsclfError(f"not enough disk space in {folder} for {what}: needs about {mb(nbytes)}, "
                         f"{mb(free)} free")


def is_no_space(e: BaseException) -> bool:
    """True for 'no space left on device' (and 'disk quota exceeded')."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def mb(n: int | float) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 1024:,.0f} kB"


def sqlite_path(uri: str) -> Path | None:
    """The DB file of an `sqlite:///` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])
