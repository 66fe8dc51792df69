"""Output side of `usclf predict`: file names per format, the resumable folder-by-folder writer, the inventory.

See `usclf.predict.run` for the resume protocol (progress log + truncation / per-folder parquet parts).
A progress line: {"unit": folder, "files": [paths relative to the input], "rows", "exams": {id: counts},
"end": output size (csv/jsonl) | "part": parquet part name}. Lines of older versions have no "files": their
folder counts as done as a whole.

Commits are staged and made durable in groups (`commit(..., sync=False)` then `sync()`): one fsync of the
output and one of the log per group instead of two per folder (on a ~7 ms fsync and exams of ~10 frames
that was a tenth of predict's time). A line is still written only after its folder's rows are on disk.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import UsclfError

FORMATS = {".csv": "csv", ".json": "jsonl", ".jsonl": "jsonl", ".parquet": "parquet"}
LOG, RUN = "progress.jsonl", "run.json"


def output_paths(out_file: str | Path) -> tuple[Path, Path, Path, str]:
    """(output, per-exam inventory, resume-state folder, format) for an output file name."""
    out = Path(out_file).absolute()
    if out.is_dir():
        raise UsclfError(f"--out {out} is a folder: give a file name, e.g. {out / 'predictions.csv'}")
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsclfError(f"output {out.name}: unknown format; use one of {', '.join(FORMATS)}")
    return out, out.with_name(f"{out.stem}_exams{out.suffix}"), out.with_name(out.name + ".parts"), fmt


class _Output:
    """Writes rows folder by folder and records each finished folder in the progress log (see module doc)."""

    def __init__(self, out: Path, state: Path, fmt: str, columns: list[str], classes: list[str], run: dict):
        self.out, self.state, self.fmt, self.columns, self.classes = out, state, fmt, columns, classes
        self.log, self.new_units, self._log_size = state / LOG, 0, 0
        self._fh = None            # append formats: the output file; parquet: the open part writer
        self._part: Path | None = None
        self._staged: list[dict] = []   # entries of finished folders whose log lines are not written yet
        if fmt == "parquet":
            import pyarrow as pa

            types = {"exam_id": pa.string(), "path": pa.string(), "frame": pa.int64(), "status": pa.string(),
                     "reason": pa.string()}
            self.schema = pa.schema([(c, types.get(c, pa.float64() if c.startswith("p_") else pa.int64()))
                                     for c in columns])
        self.entries = self._open(run)

    def _open(self, run: dict) -> list[dict]:
        """Check the run matches the recorded one, then cut everything back to the last recorded folder."""
        self.state.mkdir(parents=True, exist_ok=True)
        start_over = (f"delete {self.out.name}, {self.out.stem}_exams{self.out.suffix} and {self.state.name}/ "
                      "to start over")
        old = json.loads((self.state / RUN).read_text()) if (self.state / RUN).is_file() else None
        if old is None:
            (self.state / "run.tmp").write_text(json.dumps(run, indent=2))
            os.replace(self.state / "run.tmp", self.state / RUN)
        for key, what in (("model_sha1", "another model"), ("input", "another input folder"),
                          ("columns", "other classes")):
            if old is not None and old.get(key) != run[key]:
                raise UsclfError(f"{self.out.name} was started with {what}: choose another --out, or {start_over}")
        entries, good = [], 0
        if self.log.is_file():
            with open(self.log, "rb") as fh:
                for line in fh:
                    try:
                        if not line.endswith(b"\n"):
                            raise ValueError
                        entries.append(json.loads(line))
                    except ValueError:
                        break      # a line torn by a kill or a full disk: that folder is redone
                    good += len(line)
            os.truncate(self.log, good)
        self._log_size = good
        if self.fmt == "parquet":
            self._drop_unrecorded_parts(entries)
        elif self.out.is_file():
            os.truncate(self.out, entries[-1]["end"] if entries else 0)
        elif entries:
            raise UsclfError(f"{self.out.name} is missing but {self.state.name}/ records finished folders: "
                             f"{start_over}")
        return entries

    def _drop_unrecorded_parts(self, entries: list[dict]) -> None:
        keep = {e["part"] for e in entries}
        for p in self.state.glob("*.parquet*"):
            if p.name not in keep:
                p.unlink()         # a part or temp file of a folder that never got recorded

    def done(self) -> tuple[set[str], set[str]]:
        """(recorded files, folders recorded as a whole by an older version)."""
        files = {f for e in self.entries for f in e.get("files", ())}
        return files, {e["unit"] for e in self.entries if "files" not in e}

    def recorded(self) -> tuple[int, int, int]:
        """(bytes, rows, files) recorded so far."""
        if self.fmt == "parquet":
            parts = [self.state / e["part"] for e in self.entries if e["part"]]
            size = sum(p.stat().st_size for p in parts if p.is_file())
        else:
            size = self.entries[-1]["end"] if self.entries else 0
        return size, sum(e["rows"] for e in self.entries), sum(len(e.get("files", ())) for e in self.entries)

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._fh is None:
                self._part = self.state / f"{len(self.entries) + len(self._staged):07d}.parquet"
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

    def commit(self, unit: str, files: list[str], n_rows: int, exams: dict[str, list[int]],
               sync: bool = True) -> None:
        """Finish the folder's rows; `sync` makes them durable and records the folder now (else at the next
        `sync()`: a kill in between only redoes the staged folders)."""
        entry: dict = {"unit": unit, "files": files, "rows": n_rows, "exams": exams}
        if self.fmt == "parquet":
            entry["part"] = ""
            if self._fh is not None:
                self._fh.close()
                os.replace(str(self._part) + ".tmp", self._part)
                entry["part"] = self._part.name
            self._fh, self._part = None, None
        else:
            if self._fh is not None:
                self._fh.flush()
            entry["end"] = self.out.stat().st_size if self.out.exists() else 0
        self._staged.append(entry)
        if sync:
            self.sync()

    def copy_folder(self, entry: dict, src: Path, start: int, part_dir: Path) -> None:
        """Stage a folder recorded by another output of this run (a rank's part, shard.py): its rows are the bytes
        `start`..entry["end"] of `src` (csv/jsonl: no header) or its parquet part in `part_dir` (linked here)."""
        e = {k: entry[k] for k in ("unit", "files", "rows", "exams")}
        if self.fmt == "parquet":
            e["part"] = ""
            if entry["part"]:
                e["part"] = f"{len(self.entries) + len(self._staged):07d}.parquet"
                tmp = self.state / (e["part"] + ".tmp")
                try:
                    os.link(part_dir / entry["part"], tmp)     # the part stays valid where it is
                except OSError:
                    shutil.copyfile(part_dir / entry["part"], tmp)
                os.replace(tmp, self.state / e["part"])
        else:
            if self._fh is None:
                self._fh = open(self.out, "a", newline="", encoding="utf-8")
            if self.fmt == "csv" and self._fh.tell() == 0:
                csv.DictWriter(self._fh, self.columns, lineterminator="\n").writeheader()
            text = codecs.getincrementaldecoder("utf-8")()
            with open(src, "rb") as fh:
                fh.seek(start)
                for left in range(entry["end"] - start, 0, -(1 << 20)):
                    self._fh.write(text.decode(fh.read(min(left, 1 << 20))))
            self._fh.write(text.decode(b"", final=True))
            self._fh.flush()
            e["end"] = self.out.stat().st_size
        self._staged.append(e)

    def sync(self) -> list[dict]:
        """Make the staged folders' rows durable (one fsync), then their log lines (one more); returns them."""
        staged, self._staged = self._staged, []
        if not staged:
            return staged
        if self.fmt != "parquet" and self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        data = b"".join((json.dumps(e) + "\n").encode() for e in staged)
        with open(self.log, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._log_size += len(data)
        self.entries.extend(staged)
        self.new_units += len(staged)
        return staged

    def close(self) -> None:
        self.sync()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def abort(self) -> None:
        """After a failure: cut output and log back to the last recorded folder now (a resume would anyway), so
        what is left is valid and frees the space of the unrecorded rows."""
        fh, self._fh, self._staged = self._fh, None, []
        with contextlib.suppress(OSError):
            if fh is not None:
                fh.close()         # may fail again on a full disk; the descriptor is closed all the same
        with contextlib.suppress(OSError):
            for p in self.state.glob("*.tmp*"):
                p.unlink()
            if self.fmt == "parquet":
                self._drop_unrecorded_parts(self.entries)
            elif self.out.is_file():
                os.truncate(self.out, self.entries[-1]["end"] if self.entries else 0)
            if self.log.is_file():
                os.truncate(self.log, self._log_size)

    def _merged(self) -> bool:
        """Whether `out` already holds every recorded part (a crash or full disk can stop a merge)."""
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(self.out).num_rows == sum(e["rows"] for e in self.entries if e["part"])
        except (OSError, ValueError):
            return False

    def finish(self, exams_path: Path) -> None:
        """Merge parquet parts (if anything changed) and write the per-exam inventory."""
        self.sync()
        if self.fmt == "parquet" and (self.new_units or not self._merged()):
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
