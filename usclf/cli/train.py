"""CLI glue for the model commands: options -> typed config -> stage function."""
from __future__ import annotations

from ..config import load_config
from ..stages.evaluate import EvaluateConfig, evaluate
from ..stages.pretrain import PretrainConfig, pretrain
from .data import set_options


def _progress(args, overrides: list[str]) -> list[str]:
    return overrides + (["train.progress=false"] if args.quiet else [])


def run_pretrain(args):
    cfg = load_config(PretrainConfig, args.config, _progress(args, set_options(
        args.overrides, **{"data.path": args.data, "out": args.out, "method": args.method,
                           "train.seed": args.seed})))
    return pretrain(cfg, resume=args.resume, tracking_uri=args.tracking_uri)


def run_evaluate(args):
    cfg = load_config(EvaluateConfig, args.config, set_options(args.overrides, **{
        "model": args.model, "data.path": args.data, "out": args.out}))
    return evaluate(cfg, tracking_uri=args.tracking_uri, progress=not args.quiet)


def _trainer_opts(args) -> dict:
    """Options shared by finetune and semisup, as config keys."""
    return {"data.path": args.data, "out": args.out, "model.init": args.init,
            "label_fraction": args.label_fraction, "train.seed": args.seed}


def run_finetune(args):
    from ..stages.finetune import FinetuneConfig, finetune
    cfg = load_config(FinetuneConfig, args.config, _progress(args, set_options(args.overrides, **_trainer_opts(args))))
    return finetune(cfg, resume=args.resume, tracking_uri=args.tracking_uri)


def run_semisup(args):
    from ..stages.semisup import SemisupConfig, semisup
    cfg = load_config(SemisupConfig, args.config, _progress(args, set_options(
        args.overrides, method=args.method or (f"fixmatch-{args.heads}head" if args.heads else None),
        **_trainer_opts(args))))
    return semisup(cfg, resume=args.resume, tracking_uri=args.tracking_uri)


def run_baseline(args):
    from ..baselines.config import BaselineConfig
    from ..stages.baseline import baseline
    over = set_options(args.overrides, **{"method": args.method, "data": args.data, "out": args.out, "k": args.k,
                                          "seed": args.seed})
    cfg = load_config(BaselineConfig, args.config, over + (["progress=false"] if args.quiet else []))
    return baseline(cfg, tracking_uri=args.tracking_uri, resume=args.resume)
