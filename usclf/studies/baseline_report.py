"""docs/baselines.md from baseline_check's results file alone: per data set and method, ACC / NMI / ARI mean ± sd
[min, max] over seeds beside the paper, wall time per cell, machine, the exact commands, and the cells not run."""
from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from usclf.studies.baseline_specs import (DATASETS, METRICS, Spec, config_items, method_config, read_results,
                                          training_lengths)

SEEDS = (0, 1, 2)
NOTES = ("<!-- notes -->", "<!-- /notes -->")
BELOW = 3.0          # points (of %) below the paper that the report marks


def _stats(vals: list[float]) -> tuple[float, float, float, float]:
    sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
    return statistics.fmean(vals), sd, min(vals), max(vals)


def _num(v: float, digits: int) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def _summary(vals: list[float], digits: int) -> str:
    mean, sd, lo, hi = _stats(vals)
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}") + \
        f" [{lo:.{digits}f}, {hi:.{digits}f}]"


def _row(method: str, settings: str, cells: list[dict], spec: Spec) -> str:
    """One table row: the metrics in the paper's unit beside its numbers, the largest cluster, s per cell."""
    digits = 2 if spec.scale == 100 else 3
    paper = spec.numbers.get(method, (math.nan,) * 3)
    values = {k: [spec.scale * float(c[k]) for c in cells] for k in METRICS}
    gap = statistics.fmean(values["acc"]) - paper[0]
    gap_text = _num(gap, digits)
    if gap * 100 / spec.scale < -BELOW:
        gap_text = f"**{gap_text}**"
    parts = [_summary(values["acc"], digits), _num(paper[0], digits), gap_text]
    for i, k in enumerate(METRICS[1:], 1):
        parts += [_summary(values[k], digits), _num(paper[i], digits)]
    top = [float(c["top_cluster"]) for c in cells]
    wall = [float(c["wall_s"]) for c in cells]
    cpu = [float(c["cpu_s"]) for c in cells if c.get("cpu_s")]
    cpu_text = f"; CPU {statistics.fmean(cpu):.0f}" if cpu else ""
    resumed = " (resumed*)" if any(c.get("resumed") for c in cells) else ""
    seeds = " ".join(sorted((c["seed"] for c in cells), key=int))
    if spec.ingest is not None:     # a data set scored like every usclf model: its matched test F1 too
        parts.append(_summary([float(c["test_f1"]) for c in cells if c.get("test_f1")] or [math.nan], 3))
    return (f"| {method} | {settings and f'`{settings}`' or 'papers'} | {seeds} | " + " | ".join(parts)
            + f" | {min(top):.2f}–{max(top):.2f} | {statistics.fmean(wall):.0f} [{min(wall):.0f}, {max(wall):.0f}]"
            + f"{cpu_text}{resumed} |")


def _not_run(name: str, spec: Spec, rows: list[dict]) -> list[str]:
    """The data set's cells missing under the papers' settings, grouped into the commands that run them."""
    have = {(r["method"], int(r["seed"])) for r in rows if not r["settings"]}
    missing = defaultdict(list)                      # missing seeds -> methods
    for m in spec.methods:
        seeds = tuple(s for s in SEEDS if (m, s) not in have)
        if seeds:
            missing[seeds].append(m)
    return [f"- not run: {', '.join(ms)} (seeds {' '.join(map(str, seeds))}): `python pipelines/baseline_check.py "
            f"--dataset {name} --methods {' '.join(ms)} --seeds {' '.join(map(str, seeds))}`"
            for seeds, ms in missing.items()]


def dataset_section(name: str, rows: list[dict]) -> str:
    """One data set's Markdown section from its rows of the results file."""
    spec = DATASETS[name]
    unit = "% (ACC, NMI and ARI x 100, as paper 000)" if spec.scale == 100 else \
        "fractions (as paper 004)" if spec.numbers else "fractions"
    groups = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["settings"])].append(r)
    order = {m: i for i, m in enumerate(spec.methods)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    head = " | ".join(f"{k.upper()} mean ± sd [min, max] | paper" + (" | Δ ACC" if k == "acc" else "")
                      for k in METRICS)
    title = f"paper {spec.paper} {spec.table}" if spec.numbers else f"no paper table (paper {spec.paper}: own data)"
    k = spec.k if spec.k is not None else "the number of label combinations among the labelled images"
    lines = [f"## {spec.title} ({name}): {title}", "", f"Clustered: {spec.clustered}, K = {k}; values in {unit}.", ""]
    if spec.ingest is not None:
        head += " | test weighted F1 mean ± sd [min, max]"
    if keys:
        lines += [f"| method | settings | seeds | {head} | largest cluster | wall s / cell mean [min, max]; CPU s |",
                  "|" + "---|" * (12 + (spec.ingest is not None))]
        lines += [_row(m, s, sorted(groups[(m, s)], key=lambda c: int(c["seed"])), spec) for m, s in keys]
        lines.append("")
    lines += _not_run(name, spec, rows)
    lines += ["- training lengths (used; paper):"]
    for m, s in keys:
        cfg = method_config(m, 0, Path("."), Path("."), spec, config_items(s))
        lines.append(f"  - {m}{f' ({s})' if s else ''}: {training_lengths(cfg)}; {spec.lengths.get(m, '–')}")
    by_command = defaultdict(list)
    for r in rows:
        by_command[(r["command"], r["commit"], r["machine"])].append(r)
    for (command, at, who), cells in by_command.items():
        done = defaultdict(list)
        for c in cells:
            done[c["method"]].append(c["seed"])
        listed = "; ".join(f"{m} {' '.join(seeds)}" for m, seeds in done.items())
        lines.append(f"- `{command}` (commit {at}; {who}): {listed}")
    return "\n".join(lines)


def write_report(results: Path, path: Path) -> str:
    """Rebuild the report at `path` from `results` (the Notes block of an existing report is kept)."""
    rows = read_results(results)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    found = re.search(re.escape(NOTES[0]) + ".*?" + re.escape(NOTES[1]), old, re.S)
    notes = found.group(0) if found else f"{NOTES[0]}\n(measured reasons for the gaps go here)\n{NOTES[1]}"
    machines = defaultdict(int)
    for r in rows:
        machines[r["machine"]] += 1
    lines = ["# Clustering baselines against the papers", "",
             f"Generated by `python pipelines/baseline_check.py --report` from `{results}` (one row per cell: "
             "data set, method, seed); rebuild it rather than edit it, only the Notes block at the end is kept. "
             "mean ± sd [min, max] over the seeds listed; Δ ACC = usclf mean − paper, **bold** where more than "
             f"{BELOW:g} points below; largest cluster = share of the images in the biggest cluster (1.00: one "
             "cluster). Wall and CPU seconds per cell (CPU: this process, all threads; it moves less than wall "
             "time when the machine is shared); *resumed: an interrupted cell finished from its checkpoints, its "
             "times are the last attempt's only. DEC and IDEC start from the same seed's AE + k-means autoencoder, "
             "so their times exclude its pretraining (counted in the AE + k-means cell).", "", "Machines:"]
    lines += [f"- {who} ({n} cells)" for who, n in machines.items()] or ["- none yet"]
    for name in DATASETS:
        lines += ["", dataset_section(name, [r for r in rows if r["dataset"] == name])]
    lines += ["", "## Notes", "", notes, ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text
