"""Study arguments checked before a study deletes, creates or trains anything: one line (UsclfError, which
`usclf study` prints with exit 2) instead of a traceback after minutes of work or a deleted folder."""
from __future__ import annotations

import shutil
from pathlib import Path

from usclf.config import check_seed
from usclf.errors import UsclfError

MIN_EXAMS = 20        # simulated exams: ~0.7 patients each, every split (15 % of patients for val/test) needs some
MARKER = ".usclf-study"   # written into a folder a study created: only such a folder is ever recreated


def check_exams(exams: int, minimum: int = MIN_EXAMS) -> int:
    if exams < minimum:
        raise UsclfError(f"--exams must be >= {minimum} (each of the unlabelled/train/val/test splits needs "
                         f"patients), got {exams}")
    return exams


def check_positive(name: str, value: float, minimum: float = 0, strict: bool = True) -> float:
    if not (value > minimum if strict else value >= minimum):
        raise UsclfError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return value


def check_fractions(name: str, values) -> list[float]:
    bad = [f for f in values if not 0 < f <= 1]
    if bad or not values:
        raise UsclfError(f"{name} must be label fractions in (0, 1], got {bad[0] if bad else 'none'}")
    return list(values)


def check_seeds(name: str, values) -> list[int]:
    if not values:
        raise UsclfError(f"{name} needs at least one seed")
    return [check_seed(s, name) for s in values]


def recreate_out(out: Path, legacy: tuple[str, ...] = ()) -> Path:
    """Empty the study's own output folder: created fresh, or a folder this study made before (its MARKER, or
    every name in `legacy` from before the marker); anything else is refused, never deleted."""
    if out.exists() and not out.is_dir():
        raise UsclfError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / MARKER).is_file() or (legacy and all((out / n).exists() for n in legacy))
        if not ours:
            raise UsclfError(f"--out {out} holds files this study did not write; choose a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by a usclf study; the study may empty this folder when rerun\n")
    return out
