"""Output side of `usclf predict`: file names per format, the resumable folder-by-folder writer, the inventory.

See `usclf.stages.predict` for the resume protocol (progress log + truncation / per-folder parquet parts).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..errors import UsclfError

FORMATS = {".csv": "csv", ".json": "jsonl", ".jsonl": "jsonl", ".parquet": "parquet"}
LOG, RUN = "progress.jsonl", "run.json"


def output_paths(out_file: str | Path) -> tuple[Path, Path, Path, str]:
    """(output, per-exam inventory, resume-state folder, format) for an output file name."""
    out = Path(out_file).absolute()
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsclfError(f"output {out.name}: unknown format; use one of {', '.join(FORMATS)}")
    return out, out.with_name(f"{out.stem}_exams{out.suffix}"), out.with_name(out.name + ".parts"), fmt


# ----------------------------------------------------------------------------------------------- model


class _Output:
    """Writes rows folder by folder and records each finished folder in the progress log (see module doc)."""

    def __init__(self, out: Path, state: Path, fmt: str, columns: list[str], classes: list[str], run: dict):
        self.out, self.state, self.fmt, self.columns, self.classes = out, state, fmt, columns, classes
        self.log, self.new_units = state / LOG, 0
        self._fh = None            # append formats: the output file; parquet: the open part writer
        self._part: Path | None = None
        if fmt == "parquet":
            import pyarrow as pa

            types = {"exam_id": pa.string(), "path": pa.string(), "frame": pa.int64(), "status": pa.string(),
                     "reason": pa.string()}
            self.schema = pa.schema([(c, types.get(c, pa.float64() if c.startswith("p_") else pa.int64()))
                                     for c in columns])
        self.entries = self._open(run)

    def _open(self, run: dict) -> list[dict]:
        if not self.state.is_dir() and self.out.exists():
            raise UsclfError(f"{self.out} exists but has no resume state ({self.state.name}/): "
                             "delete it or choose another --out")
        self.state.mkdir(parents=True, exist_ok=True)
        old = json.loads((self.state / RUN).read_text()) if (self.state / RUN).is_file() else None
        if old is None:
            (self.state / "run.tmp").write_text(json.dumps(run, indent=2))
            os.replace(self.state / "run.tmp", self.state / RUN)
        for key, what in (("model_sha1", "another model"), ("input", "another input folder"),
                          ("columns", "other classes")):
            if old is not None and old.get(key) != run[key]:
                raise UsclfError(f"{self.out.name} was started with {what}: choose another --out, or "
                                 f"delete {self.out.name} and {self.state.name}/ to start over")
        entries, good = [], 0
        if self.log.is_file():
            with open(self.log, "rb") as fh:
                for line in fh:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        break      # a line torn by a kill: that folder is redone
                    good += len(line)
            os.truncate(self.log, good)
        if self.fmt == "parquet":
            keep = {e["part"] for e in entries}
            for p in self.state.glob("*.parquet*"):
                if p.name not in keep:
                    p.unlink()     # a part or temp file of a folder that never finished
        elif self.out.is_file():
            os.truncate(self.out, entries[-1]["end"] if entries else 0)
        elif entries:
            raise UsclfError(f"{self.out.name} is missing but {self.state.name}/ records finished "
                             f"folders: delete {self.state.name}/ to start over")
        return entries

    def done(self) -> set[str]:
        return {e["unit"] for e in self.entries}

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._fh is None:
                self._part = self.state / f"{len(self.entries):07d}.parquet"
                self._fh = pq.ParquetWriter(str(self._part) + ".tmp", self.schema)
            self._fh.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            return
        if self._fh is None:
            self._fh = open(self.out, "a", newline="", encoding="utf-8")
        if self.fmt == "csv":
            w = csv.DictWriter(self._fh, self.columns, lineterminator="\n")
            if self._fh.tell() == 0:
                w.writeheader()
            w.writerows(rows)
        else:
            self._fh.writelines(json.dumps(r, allow_nan=False) + "\n" for r in rows)

    def commit(self, unit: str, n_rows: int, exams: dict[str, list[int]]) -> None:
        """Make the folder's rows durable, then record it (a kill in between only redoes this folder)."""
        entry: dict = {"unit": unit, "rows": n_rows, "exams": exams}
        if self.fmt == "parquet":
            entry["part"] = ""
            if self._fh is not None:
                self._fh.close()
                os.replace(str(self._part) + ".tmp", self._part)
                entry["part"] = self._part.name
        else:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            entry["end"] = self.out.stat().st_size if self.out.exists() else 0
        self._fh, self._part = None, None
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries.append(entry)
        self.new_units += 1

    def close(self) -> None:
        if self._fh is not None:   # interrupted mid-folder: the temp part / unrecorded rows are dropped on resume
            self._fh.close()
            self._fh = None

    def finish(self, exams_path: Path) -> None:
        """Merge parquet parts (if anything changed) and write the per-exam inventory."""
        if self.fmt == "parquet" and (self.new_units or not self.out.exists()):
            import pyarrow.parquet as pq

            with pq.ParquetWriter(str(self.state / "merge.tmp"), self.schema) as w:
                for e in (e for e in self.entries if e["part"]):
                    w.write_table(pq.read_table(self.state / e["part"], schema=self.schema))
            os.replace(self.state / "merge.tmp", self.out)
        inv, tmp = inventory(self.entries, self.classes), self.state / ("exams.tmp" + exams_path.suffix)
        if self.fmt == "csv":
            inv.to_csv(tmp, index=False)
        elif self.fmt == "jsonl":
            inv.to_json(tmp, orient="records", lines=True)
        else:
            inv.to_parquet(tmp, index=False)
        os.replace(tmp, exams_path)


def inventory(entries: list[dict], classes: list[str]):
    """Per-exam organ inventory from the progress entries: frames predicted/skipped, frames per class,
    class present (0/1) and the present classes joined by '+'."""
    import pandas as pd

    tally: dict[str, np.ndarray] = {}
    for e in entries:
        for eid, counts in e["exams"].items():
            tally[eid] = tally.get(eid, 0) + np.asarray(counts, dtype=np.int64)
    cols = ["n_frames", "n_skipped"] + [f"n_{c}" for c in classes]
    df = pd.DataFrame([t for t in tally.values()], columns=cols, index=pd.Index(list(tally), name="exam_id"))
    for c in classes:
        df[c] = (df[f"n_{c}"] > 0).astype(np.int64)
    df["organs"] = ["+".join(c for c in classes if r[c]) for _, r in df.iterrows()]
    return df.reset_index()
