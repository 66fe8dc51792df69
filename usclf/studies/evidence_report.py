"""Write docs/results.md from evidence runs (`pipelines/evidence.py` output folders).

    python pipelines/evidence_report.py --run runs/evidence_sim --run runs/evidence_abdomen --out docs/results.md

Tables in the layout of paper 003 Table 1 (clustering: PICA vs LSD) and of Fig. 6 (weighted F1 per
strategy and label fraction: mean, 95 % CI over training seeds x split seeds, n), the paired difference
of each semi-supervised strategy against supervised fine-tuning from the same init (same split, fraction
and seed, hence the same labelled images), the pseudo-label diagnostics, and the figures.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd


from usclf.errors import UsclfError
from usclf.eval.report import seeds_summary
from usclf.studies.harness import cell_dir, read_results
from usclf.studies.entry import study_lock

PAPER_FIG6 = ("paper 003 (Fig. 6, Sec. 3.3.2, 10 % labels): semi-supervised from deep clustering 79.3, supervised "
              "from deep clustering 76.9, supervised from ImageNet 69.2; best model 84.1 at 100 %.")
PAPER_TABLE1 = ("paper 003 (Table 1, Sec. 3.3.1): LSD matches or beats PICA in weighted F1 with a smaller spread "
                "over seeds (Fig. 5: λ-sensitivity).")


def _ci(values) -> str:
    s = seeds_summary(list(values))
    if s["n"] < 2:
        return f"{s['mean']:.3f} (n=1)"
    return f"{s['mean']:.3f} [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}] (n={s['n']})"


def _cell(values: pd.Series) -> str:
    return _ci(values) if len(values) else "not run"


def fraction_table(res: pd.DataFrame, value: str = "f1") -> str:
    """Strategy x fraction table of `value` (test 'f1' or 'val_f1'): mean [95 % CI] (n)."""
    fr = sorted(res["label_fraction"].unique())
    lines = ["| strategy | " + " | ".join(f"{f * 100:g} %" for f in fr) + " |", "|---" * (len(fr) + 1) + "|"]
    for m in res["method"].drop_duplicates():
        cells = [_cell(res[(res["method"] == m) & (res["label_fraction"] == f)][value].dropna()) for f in fr]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def val_part(res: pd.DataFrame) -> list[str]:
    """The validation table candidates are chosen on (when the run recorded it)."""
    if "val_f1" not in res.columns or res["val_f1"].isna().all():
        return []
    return ["Validation weighted F1 of the kept weights (candidates are chosen on this, never on test):", "",
            fraction_table(res, "val_f1"), ""]


def _pair_rows(res: pd.DataFrame, m: str, ref: str) -> list[str]:
    """Table rows of `m` minus `ref` in points, paired by (split, fraction, seed)."""
    key = ["split_seed", "label_fraction", "seed"]
    a = res[res["method"] == m].set_index(key)["f1"]
    b = res[res["method"] == ref].set_index(key)["f1"]
    both = a.index.intersection(b.index)
    rows = []
    for f in sorted({k[1] for k in both}):
        idx = [k for k in both if k[1] == f]
        d = (a.loc[idx] - b.loc[idx]).to_numpy() * 100
        rows.append(f"| {m} | {ref} | {f * 100:g} % | {_ci(d).replace('(n=', 'points (n=')} | "
                    f"{int((d > 0).sum())}/{len(d)} |")
    return rows


PAIR_HEAD = ["| strategy | vs | fraction | mean difference [95 % CI] | wins |", "|---|---|---|---|---|"]


def paired_table(res: pd.DataFrame) -> str:
    """Each semi-supervised strategy minus supervised from the same init (and the same '+variant' when that
    supervised arm was run, e.g. one optimiser protocol for both), paired by (split, fraction, seed)."""
    lines = list(PAIR_HEAD)
    for m in res["method"].drop_duplicates():
        if not m.startswith("semisup-"):
            continue
        ref = "supervised-" + m.split(":")[0].split("-", 1)[1]
        variant = m.partition("+")[2]
        if variant and (res["method"] == f"{ref}+{variant}").any():
            ref = f"{ref}+{variant}"
        lines += _pair_rows(res, m, ref)
    return "\n".join(lines)


def variant_table(res: pd.DataFrame) -> str:
    """Each plain strategy minus its '+variant' control (e.g. fixmatch-twohead minus +nounl: what the
    unlabelled loss adds); empty when no variant was run beside its plain arm."""
    methods = list(res["method"].drop_duplicates())
    rows = []
    for m in methods:
        base = m.partition("+")[0]
        if "+" in m and base in methods:
            rows += _pair_rows(res, base, m)
    return "\n".join(PAIR_HEAD + rows) if rows else ""


def variant_part(res: pd.DataFrame) -> list[str]:
    table = variant_table(res)
    return ["### Each strategy minus its '+variant' control (paired: same split, labels, seed)", "", table, ""] \
        if table else []


def pretrain_table(pre: pd.DataFrame) -> str:
    lines = ["| method | matched weighted F1 | NMI | ACC | sd of F1 over all runs (splits x seeds) |",
             "|---|---|---|---|---|"]
    for m in pre["method"].drop_duplicates():
        g = pre[pre["method"] == m]
        sd = g["f1"].std(ddof=1)
        lines.append(f"| {m} | {_ci(g['f1'])} | {_ci(g['nmi'])} | {_ci(g['acc'])} | {sd:.3f} |")
    return "\n".join(lines)


DIAG_EXTRA = {"pl_recall_end": "recall of the truly positive entries", "pl_entry_acc_end":
              "accuracy of every accepted entry (positives and negatives)", "pl_share_gap_end":
              "class-share gap of the accepted positives vs the truth (0 = same shares)"}


def diag_table(res: pd.DataFrame) -> str:
    cols = [c for c in ("mask_rate_end", "pl_precision_end", "pl_accepted_end") if c in res.columns]
    if not cols:
        return "(no semi-supervised runs)"
    extra = [c for c in DIAG_EXTRA if c in res.columns and res[c].notna().any()]  # runs before they existed: none
    semi = res[res["method"].str.startswith("semisup")]
    d = semi.groupby(["method", "label_fraction"])[cols + extra].mean().reset_index()
    lines = ["| strategy | fraction | mask rate (last window) | pseudo-label precision (last window) | "
             "accepted positive labels (last window) |" + "".join(f" {DIAG_EXTRA[c]} |" for c in extra),
             "|---|---|---|---|---|" + "---|" * len(extra)]
    for _, r in d.iterrows():
        prec = f"{r['pl_precision_end']:.2f}" if "pl_precision_end" in r else "n/a (no truth)"
        lines.append(f"| {r['method']} | {r['label_fraction'] * 100:g} % | {r.get('mask_rate_end', np.nan):.2f} | "
                     f"{prec} | {r.get('pl_accepted_end', np.nan):.0f} |" + "".join(f" {r[c]:.2f} |" for c in extra))
    return "\n".join(lines)


def per_class_table(run: Path, res: pd.DataFrame) -> str:
    """Pseudo-label precision per class over whole runs (sum of counts over all windows and runs), beside the
    share of frames carrying the class: precision near that share means the pseudo-labels carry no signal."""
    manifest = run / "dataset" / "manifest.csv"
    files = {m: sorted(run.glob(f"split*/train/runs/method{m}-*fraction*/diagnostics/pseudo_labels.csv"))
             for m in res["method"].drop_duplicates() if m.startswith("semisup")}
    if not manifest.is_file() or not any(files.values()):
        return ""
    full = pd.read_csv(manifest)
    rows = []
    counts = ["tp", "truth_pos", "judged", "right"]  # written by runs since entry accuracy exists
    for m, fs in files.items():
        d = pd.concat([pd.read_csv(f) for f in fs])
        new = set(counts) <= set(d.columns) and d[counts].notna().all().all()
        if not new:
            d["tp"] = d["precision"].fillna(0) * d["accepted"]
        g = d.groupby("class", sort=False)[["accepted", "tp"] + (counts[1:] if new else [])].sum()
        for c, r in g.iterrows():
            share = float(pd.to_numeric(full[c], errors="coerce").mean()) if c in full.columns else np.nan
            prec = r["tp"] / r["accepted"] if r["accepted"] else np.nan
            row = f"| {m} | {c} | {int(r['accepted'])} | {prec:.2f} | {share:.2f} |"
            if new:
                rows.append(row + f" {_r(r['tp'], r['truth_pos'])} | {_r(r['right'], r['judged'])} | "
                            f"{_r(r['accepted'], g['accepted'].sum())} | {_r(r['truth_pos'], g['truth_pos'].sum())} |")
            else:
                rows.append(row + " n/a | n/a | n/a | n/a |")
    head = ["| strategy | class | accepted positive pseudo-labels (all runs) | precision | share of frames with "
            "the class | recall | entry accuracy (positives and negatives) | share of the accepted positives | "
            "share of the truly positive entries |", "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + rows)


def _r(a, b) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def class_f1_table(run: Path, res: pd.DataFrame) -> str:
    """Mean test F1 per class, strategy and fraction (over seeds x splits): where a strategy gains or loses."""
    rows = []
    for r in res.itertuples():
        f = cell_dir(run / f"split{r.split_seed}" / "train" / "runs",
                     {"method": r.method, "label_fraction": r.label_fraction, "seed": r.seed}) / "eval" / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            rows.append({"method": r.method, "label_fraction": r.label_fraction,
                         **{k[len("test/f1_"):]: v for k, v in m.items() if k.startswith("test/f1_")}})
    if not rows:
        return ""
    d = pd.DataFrame(rows)
    classes = [c for c in d.columns if c not in ("method", "label_fraction")]
    g = d.groupby(["label_fraction", "method"], sort=False)[classes].mean().sort_index(level=0, sort_remaining=False)
    lines = ["| fraction | strategy | " + " | ".join(classes) + " |", "|---" * (len(classes) + 2) + "|"]
    lines += [f"| {f * 100:g} % | {m} | " + " | ".join(f"{v:.3f}" for v in r) + " |" for (f, m), r in g.iterrows()]
    return "\n".join(lines)


def compute_table(res: pd.DataFrame) -> str:
    if "seconds" not in res.columns:
        return ""
    d = res.groupby("method")["seconds"].agg(["mean", "sum"]).reindex(res["method"].drop_duplicates())
    lines = ["| strategy | mean wall seconds per run | total minutes |", "|---|---|---|"]
    lines += [f"| {m} | {r['mean']:.0f} | {r['sum'] / 60:.1f} |" for m, r in d.iterrows()]
    return "\n".join(lines)


def _truth_known(run: Path) -> bool:
    """True when every ingested frame carries labels (simulated data): pseudo-labels can be scored."""
    f = run / "dataset" / "manifest.csv"
    return f.is_file() and bool(pd.read_csv(f).iloc[:, 6:7].notna().all().all())


def section(run: Path, img_dir: Path) -> str:
    res = read_results(run / "results.csv")
    if not _truth_known(run):
        res = res.drop(columns=[c for c in ("pl_precision_end",) if c in res.columns])
    pre = pd.read_csv(run / "pretrain.csv") if (run / "pretrain.csv").is_file() else None
    name = run.name
    img = img_dir / f"{name}_label_fractions.png"
    shutil.copy(run / "label_fractions.png", img)
    wall = (run / "wall_time.txt").read_text().strip() if (run / "wall_time.txt").is_file() else "n/a"
    cmd = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else "(see README)"
    machine = (run / "machine.txt").read_text().strip() if (run / "machine.txt").is_file() else "not recorded"
    n_split, n_seed = res["split_seed"].nunique(), res["seed"].nunique()
    parts = [f"## {name}", "", f"Command: `{cmd}`  ", f"Wall time: {wall} on the 2-core CPU; "
             f"{n_seed} training seeds x {n_split} split seeds per cell.  ", f"Machine: {machine}.", "",
             "### Weighted F1 on test (mean [95 % CI], paper Fig. 6 layout)", "", fraction_table(res), "",
             PAPER_FIG6, "", *val_part(res), f"![label fractions]({img.relative_to(img_dir.parent)})", "",
             "### Semi-supervised minus supervised from the same init (paired: same split, labels, seed)", "",
             paired_table(res), "", *variant_part(res), "### Pseudo-label diagnostics (against the truth of the unlabelled images)", "",
             diag_table(res), "", per_class_table(run, res) if _truth_known(run) else
             "The unlabelled images carry no labels here, so pseudo-label precision cannot be measured; the mask "
             "rate and accepted counts above are exact.", "", "### Compute per strategy (training + evaluation, 2 CPU cores)", "",
             compute_table(res), ""]
    per_class = class_f1_table(run, res)
    if per_class:
        parts += ["### Test F1 per class (mean over seeds x splits)", "", per_class, ""]
    if pre is not None and not pre.empty:   # a random-init-only study pretrains nothing
        parts += ["### Deep clustering: PICA vs LSD (paper Table 1 layout)", "", pretrain_table(pre), "",
                  PAPER_TABLE1, ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="an evidence output folder (repeatable)")
    p.add_argument("--out", default="docs/results.md", help="Markdown file to write")
    p.add_argument("--intro", default="", help="a file whose text goes before the tables")
    args = p.parse_args(argv)
    with study_lock("evidence-report", args.out):   # before any check that could write
        return _main(args)


def _main(args) -> int:
    out = Path(args.out)
    for r in args.run:   # every run folder checked before img/ or the report is written
        if not (Path(r) / "results.csv").is_file() or not (Path(r) / "label_fractions.png").is_file():
            raise UsclfError(f"--run {r} is not an evidence run folder (no results.csv / label_fractions.png)")
    if args.intro and not Path(args.intro).is_file():
        raise UsclfError(f"--intro {args.intro} not found")
    if out.is_dir():
        raise UsclfError(f"--out {out} is a folder; give the Markdown file to write")
    img_dir = out.parent / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    intro = Path(args.intro).read_text() if args.intro else ""
    body = "\n".join(section(Path(r), img_dir) for r in args.run)
    out.write_text("# Label efficiency: evidence\n\n" + intro + "\n" + body)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("evidence-report"))
