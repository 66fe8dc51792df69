"""`usclf suggest` glue: options -> suggest() -> a short report on stdout."""
from __future__ import annotations

from ..active.suggest import SuggestResult, suggest


def run_suggest(args) -> SuggestResult:
    res = suggest(args.model, args.data, args.budget, args.out, clusters=args.clusters, labeled=args.labeled,
                  pool_splits=tuple(s.strip() for s in args.pool.split(",") if s.strip()), strategy=args.strategy,
                  cover=args.cover, dup_corr=args.dup_corr, seed=args.seed, split_seed=args.split_seed,
                  progress=not args.quiet)
    short = f" (budget {args.budget}: the other pool frames were near duplicates)" if res.n_suggested < args.budget \
        and res.n_suggested < res.n_pool else ""
    print(f"suggested {res.n_suggested} of {res.n_pool} unlabelled frames ({res.n_labelled} labelled so far){short}")
    print(f"  list {res.csv}\n  page {res.html}")
    return res
