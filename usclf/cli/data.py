"""CLI glue for the data commands: simulate, ingest (+ split), split."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from ..config import dump_config, load_config
from ..data.cache import open_dataset
from ..data.ingest import IngestStageConfig, ingest
from ..data.simulate import SimulateConfig, format_summary, simulate
from ..data.splits import SplitConfig, disjointness, split_dataset, split_summary


def set_options(overrides: list[str] | None, **opts) -> list[str]:
    """Turn explicit CLI options into overrides placed before the user's key=value ones."""
    return [f"{k}={v}" for k, v in opts.items() if v is not None] + list(overrides or [])


def run_simulate(args) -> dict:
    size = args.frame_size
    if args.size_deprecated is not None:
        print("usclf simulate: warning: --size is deprecated, use --frame-size (ingest's --size is the cache size)",
              file=sys.stderr)
        size = size if size is not None else args.size_deprecated
    cfg = load_config(SimulateConfig, args.config, set_options(args.overrides, exams=args.exams,
                                                               format=args.format, size=size, seed=args.seed))
    summary = simulate(args.out, cfg, progress=not args.quiet)
    if args.quiet:
        print(format_summary(summary))
    return summary


def run_ingest(args):
    cfg = load_config(IngestStageConfig, args.config, set_options(args.overrides, **{"ingest.size": args.size}))
    res = ingest(args.root, args.out, args.labels, cfg.ingest, progress=not args.quiet)
    shown = IngestStageConfig(replace(cfg.ingest, salt="<set>" if cfg.ingest.salt else None), cfg.split)
    dump_config(shown, Path(args.out) / "ingest_config.yaml")  # never the salt itself: it unmasks patient ids
    print(f"ingested {res.n_frames_kept} frames from {res.n_files_kept}/{res.n_files} files "
          f"({res.n_files_skipped} files skipped, {res.n_frames_dropped} frames dropped; see {res.report})")
    print(f"  cache {res.images}  manifest {res.manifest}")
    if args.labels and res.n_label_rows_unmatched:
        print(f"  warning: {res.n_label_rows_unmatched} labels-CSV rows matched no file (check their paths)")
    if not args.no_split:
        split = cfg.split
        if res.n_labelled_frames == 0:  # an unlabelled archive: every exam is pretraining data
            split = replace(cfg.split, unlabeled=float(open_dataset(args.out).meta["n_exams"]),
                            train=0.0, val=0.0, test=0.0)
        df = split_dataset(args.out, split)
        print(f"split (seed {split.seed}, {disjointness(args.out, split)}) -> {df.attrs['path']}\n"
              f"{split_summary(df)}")
        if res.n_labelled_frames == 0:
            print("no labels: every exam is in `unlabeled` (enough for `usclf pretrain`); to draw train/val/test, "
                  "ingest again with --labels LABELS.csv (see README, 'Labels CSV')")
    return res


def run_split(args):
    cfg = load_config(SplitConfig, args.config, set_options(args.overrides, seed=args.seed))
    df = split_dataset(args.data, cfg)
    print(f"split (seed {cfg.seed}, {disjointness(args.data, cfg)}) -> {df.attrs['path']}\n{split_summary(df)}")
    return df
