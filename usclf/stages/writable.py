"""Output folders proven writable before any work starts, so a read-only folder is one line, not a traceback
after minutes of inference (suggest --out, predict --dicom-sr)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UsclfError
from ..paths import check_out_dir


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
