"""Evidence run (issue: label efficiency): strategies x label fractions x training seeds x split seeds.

    python pipelines/evidence.py --config configs/evidence_sim.yaml       # simulated exams
    python pipelines/evidence.py --config configs/evidence_abdomen.yaml   # the real exams in ../shared/data

Per split seed: a patient-disjoint, label-stratified split; PICA and LSD pretrained on its unlabelled exams
(each over `pretrain_seeds`, scored by Algorithm 1 matching on val -> test); then every strategy at every
fraction and training seed from the same LSD model (pretrain seed 0), with the same labelled subset per
(fraction, seed) for every strategy. One MLflow experiment (`experiment`) holds it all: a parent run with the
curves over split seeds (metric test_f1/<strategy>, step = label %), under it a parent per split seed's
pretrain and train study, under those one run per cell. OUT holds results.csv,
pretrain.csv, diagnostics.csv and the figure; `report=docs/results.md` writes the Markdown report.
A re-run skips finished cells.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


from usclf.config import load_config, to_dict
from usclf.data.ingest import IngestConfig, ingest
from usclf.data.simulate import SimulateConfig, simulate
from usclf.data.splits import SplitConfig, split_dataset, split_summary
from usclf.errors import UsclfError
from usclf.eval.plots import plot_label_fraction_curves
from usclf.eval.pseudo_diagnostics import window_summary
from usclf.stages.finetune import FinetuneConfig, finetune
from usclf.stages.pretrain import PretrainConfig, pretrain
from usclf.stages.semisup import SemisupConfig, semisup
from usclf.studies.harness import log_fraction_curves, read_metrics, read_results, run_study, study_main
from usclf.studies.machine import machine_fingerprint
from usclf.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class EvidenceConfig:
    """What the evidence run compares; stage settings come from the stage config files."""
    source: str = "simulate"             # simulate | a folder of exam folders (e.g. ../shared/data/abdomen_us/export)
    labels: str = ""                     # labels CSV for a folder source
    exams: int = 240                     # simulated exams
    sim_size: int = 96                   # simulated frame size before ingest
    ingest: IngestConfig = field(default_factory=lambda: IngestConfig(size=64))
    split: SplitConfig = field(default_factory=lambda: SplitConfig(unlabeled=0.5, train=0.3, val=0.1, test=0.1))
    split_seeds: list[int] = field(default_factory=lambda: [0, 1])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pretrain_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pretrain_methods: list[str] = field(default_factory=lambda: ["lsd", "pica"])
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.2])
    # supervised-random | supervised-dc | semisup-random:METHOD | semisup-dc:METHOD (a registered semisup method)
    strategies: list[str] = field(default_factory=lambda: [
        "supervised-random", "supervised-dc", "semisup-dc:fixmatch-twohead", "semisup-dc:freematch-twohead"])
    pretrain_config: str = "configs/pretrain_lsd_demo.yaml"
    finetune_config: str = "configs/finetune_demo.yaml"
    semisup_config: str = "configs/semisup_demo.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_overrides: list[str] = field(default_factory=list)
    semisup_overrides: list[str] = field(default_factory=list)
    # named extra overrides of a strategy's stage: "semisup-dc:fixmatch-twohead+ema" adds variants["ema"] to
    # the semisup cell, "supervised-dc+sgd" variants["sgd"] to the finetune cell
    variants: dict = field(default_factory=dict)
    # strategy -> the fractions it runs at (default: all `fractions`): candidates screened at 10 % first
    strategy_fractions: dict = field(default_factory=dict)
    out: str = "runs/evidence"
    experiment: str = "evidence"
    # rebuild OUT/results.csv, pretrain.csv and the figure from the cells finished so far and stop (a partial
    # run's tables, to commit while the rest runs); trains nothing
    collect_only: bool = False


def parse_strategy(name: str) -> tuple[str, str, str | None]:
    """'semisup-dc:freematch-twohead' -> ('semisup', 'dc', 'freematch-twohead'); a '+VARIANT' suffix (see
    `split_variant`) is ignored here."""
    head, _, method = name.partition("+")[0].partition(":")
    stage, _, init = head.partition("-")
    if stage not in ("supervised", "semisup") or init not in ("random", "dc") or (stage == "semisup") != bool(method):
        raise UsclfError(f"strategy '{name}' must be supervised-random|dc or semisup-random|dc:METHOD")
    return stage, init, method or None


def split_variant(method: str, variants: dict) -> tuple[str, list[str]]:
    """'fixmatch-twohead+ema' (or a whole strategy name) -> ('fixmatch-twohead', variants['ema']); one-line
    error for an unknown variant."""
    method, _, variant = method.partition("+")
    if variant and variant not in variants:
        raise UsclfError(f"strategy variant '+{variant}' is not defined under variants: ({', '.join(variants) or 'none'})")
    return method, [str(v) for v in variants.get(variant, [])] if variant else []


def prepare_data(cfg: EvidenceConfig, out: Path) -> Path:
    """Simulate (or take) the exam folders and ingest them once; returns the dataset folder."""
    data = out / "dataset"
    if (data / "dataset.json").is_file():
        return data
    if cfg.source == "simulate":
        raw = out / "exams"
        simulate(raw, SimulateConfig(exams=cfg.exams, size=cfg.sim_size, format="mixed", seed=0), progress=False)
        labels = raw / "labels.csv"
    else:
        raw, labels = Path(cfg.source), Path(cfg.labels)
    ingest(raw, data, labels, cfg.ingest, progress=False)
    return data


def _pretrain_cells(cfg: EvidenceConfig, data: Path, split_seed: int, out: Path, uri: str | None,
                    top: str | None = None) -> pd.DataFrame:
    cells = [{"method": m, "seed": s} for m in cfg.pretrain_methods for s in cfg.pretrain_seeds]
    if not cells:  # random-init-only studies (e.g. the digits benchmark) pretrain nothing
        return pd.DataFrame(columns=["method", "seed", "f1"])

    def run_cell(cell, cell_out, parent):
        over = [{"data.path": data, "data.split_seed": split_seed, "out": cell_out, "method": cell["method"],
                 "train.seed": cell["seed"], "experiment": cfg.experiment, "train.progress": False},
                *cfg.pretrain_overrides]
        pretrain(load_config(PretrainConfig, ROOT / cfg.pretrain_config, over), tracking_uri=uri, parent_run_id=parent)
        m = read_metrics(cell_out)
        return {"f1": m["test/weighted_f1"], "nmi": m["test/nmi"], "acc": m["test/acc"], "ari": m["test/ari"]}

    return run_study(f"{cfg.experiment}-pretrain-split{split_seed}", out, cells, run_cell, ["method"],
                     None, {"split_seed": split_seed}, uri, progress=False, experiment=cfg.experiment,
                     parent_run_id=top, child_tags={"split_seed": split_seed})


def _train_cells(cfg: EvidenceConfig, data: Path, split_seed: int, dc_model: Path, out: Path,
                 uri: str | None, top: str | None = None) -> pd.DataFrame:
    cells = [{"method": s, "label_fraction": f, "seed": seed} for s in cfg.strategies
             for f in cfg.strategy_fractions.get(s, cfg.fractions) for seed in cfg.seeds]

    def run_cell(cell, cell_out, parent):
        stage, init, method = parse_strategy(cell["method"])
        extra = split_variant(cell["method"], cfg.variants)[1]
        over = [{"data.path": data, "data.split_seed": split_seed, "out": cell_out,
                 "label_fraction": cell["label_fraction"], "train.seed": cell["seed"],
                 "model.init": dc_model if init == "dc" else "random", "figures": False,
                 "experiment": cfg.experiment, "train.progress": False}]
        t0 = time.time()
        if stage == "supervised":
            finetune(load_config(FinetuneConfig, ROOT / cfg.finetune_config, over + cfg.finetune_overrides + extra),
                     tracking_uri=uri, parent_run_id=parent)
        else:
            semisup(load_config(SemisupConfig, ROOT / cfg.semisup_config,
                                over + [{"method": method}] + cfg.semisup_overrides + extra), tracking_uri=uri,
                    parent_run_id=parent)
        m = read_metrics(cell_out)
        return {"f1": m["test/weighted_f1"], "val_f1": best_val_f1(cell_out), "seconds": round(time.time() - t0, 1),
                **_diag(cell_out)}

    return run_study(f"{cfg.experiment}-split{split_seed}", out, cells, run_cell, ["method", "label_fraction"],
                     lambda d, png: plot_label_fraction_curves(d, png, f"split seed {split_seed}"),
                     {"split_seed": split_seed, **to_dict(cfg)}, uri, progress=True, experiment=cfg.experiment,
                     parent_run_id=top, child_tags={"split_seed": split_seed})


def best_val_f1(cell_out: Path) -> float:
    """The validation weighted F1 the stage kept its weights at (model file provenance): what candidates are
    chosen on - never the test F1."""
    from usclf.models.modelfile import read_model_info

    return float(read_model_info(cell_out / "model.pt").provenance.get("best_val_f1") or float("nan"))


def _diag(cell_out: Path) -> dict:
    """Last-window mask rate and pseudo-label precision of the accepted positives, then (columns added later,
    so they stay last in results.csv) recall, the accuracy of every accepted entry (negatives too) and the
    gap between the accepted positives' class shares and the truth's (micro over classes) of a semisup run."""
    f = cell_out / "diagnostics" / "pseudo_labels.csv"
    if not f.is_file():
        return {}
    d = pd.read_csv(f)
    last = d[d["step"] == d["step"].max()]
    acc = last["accepted"].sum()
    tp = (last["precision"].fillna(0) * last["accepted"]).sum()
    w = window_summary(last)
    return {"mask_rate_end": float(last["mask_rate"].iloc[0]), "pl_precision_end": float(tp / acc) if acc else float("nan"),
            "pl_accepted_end": int(acc), "pl_recall_end": w["recall"], "pl_entry_acc_end": w["entry_acc"],
            "pl_share_gap_end": w["share_gap"]}


def run(cfg: EvidenceConfig, tracking_uri: str | None = None, progress: bool = True) -> pd.DataFrame:
    unknown = set(cfg.strategy_fractions) - set(cfg.strategies)
    if unknown:
        raise UsclfError(f"strategy_fractions names strategies not in strategies: {', '.join(sorted(unknown))}")
    for s in cfg.strategies:
        parse_strategy(s)
        split_variant(s, cfg.variants)
    out = Path(cfg.out)
    if cfg.collect_only:
        return collect(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = prepare_data(cfg, out)
    results, pre = [], []
    # one MLflow experiment: this parent, a parent per split seed's pretrain and train study, their cells
    with Tracker(tracking_uri, cfg.experiment, f"{cfg.experiment}-study", to_dict(cfg),
                 {"study": cfg.experiment}) as top:
        for ss in cfg.split_seeds:
            split = split_dataset(data, SplitConfig(**{**to_dict(cfg.split), "seed": ss}))
            print(f"split seed {ss}:\n{split_summary(split)}")
            sdir = out / f"split{ss}"
            p = _pretrain_cells(cfg, data, ss, sdir / "pretrain", tracking_uri, top.run_id)
            pre.append(p.assign(split_seed=ss))
            lsd = sdir / "pretrain" / "runs" / f"methodlsd-seed{cfg.pretrain_seeds[0]}" / "model.pt"
            r = _train_cells(cfg, data, ss, lsd, sdir / "train", tracking_uri, top.run_id)
            results.append(r.assign(split_seed=ss))
        res = write_tables(out, pd.concat(results, ignore_index=True), pd.concat(pre, ignore_index=True))
        log_fraction_curves(top, res)  # test_f1/<strategy> at step = label %, mean over seeds x split seeds
        for f in ("results.csv", "pretrain.csv", "label_fractions.png"):
            top.log_artifact(out / f)
    if not (out / "wall_time.txt").is_file():  # a re-run that only skips finished cells keeps the first time
        (out / "wall_time.txt").write_text(f"{(time.time() - t0) / 60:.1f} min\n")
        (out / "machine.txt").write_text(machine_fingerprint() + "\n")
    print(f"evidence run done in {(time.time() - t0) / 60:.1f} min -> {out}")
    return res


def write_tables(out: Path, res: pd.DataFrame, pre: pd.DataFrame) -> pd.DataFrame:
    """OUT/results.csv, pretrain.csv and label_fractions.png (one point per (split, seed) pair)."""
    res.to_csv(out / "results.csv", index=False)
    pre.to_csv(out / "pretrain.csv", index=False)
    runs = res.assign(seed=res["split_seed"] * 1000 + res["seed"])
    plot_label_fraction_curves(runs, out / "label_fractions.png", "test weighted F1 (mean, 95% CI over seeds x splits)")
    return res


def collect(out: Path) -> pd.DataFrame:
    """The tables of the cells finished so far under OUT/split*/ (a run still going, or cut short)."""
    def gather(kind: str) -> pd.DataFrame:
        parts = [read_results(f).assign(split_seed=int(f.parts[-3].removeprefix("split")))
                 for f in sorted(out.glob(f"split*/{kind}/results.csv"))]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    res = gather("train")
    if res.empty:
        raise UsclfError(f"{out} holds no finished training cell (no split*/train/results.csv)")
    if not (out / "machine.txt").is_file():
        (out / "machine.txt").write_text(machine_fingerprint() + "\n")
    print(f"collected {len(res)} finished cells -> {out / 'results.csv'}")
    return write_tables(out, res, gather("pretrain"))


def main(argv=None) -> int:
    return study_main("evidence", __doc__, EvidenceConfig, run, argv)


if __name__ == "__main__":
    from usclf.studies.entry import run_study_cli
    sys.exit(run_study_cli("evidence"))
