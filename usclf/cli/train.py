"""CLI glue for the model commands: options -> typed config -> stage function."""
from __future__ import annotations

from ..config import load_config
from .cli_data import _set
from .evaluate import EvaluateConfig, evaluate
from .pretrain import PretrainConfig, pretrain


def _progress(args, overrides: list[str]) -> list[str]:
    return overrides + (["train.progress=false"] if args.quiet else [])


def run_pretrain(args):
    cfg = load_config(PretrainConfig, args.config, _progress(args, _set(
        args.overrides, **{"data.path": args.data, "out": args.out, "method": args.method,
                           "train.seed": args.seed})))
    return pretrain(cfg, resume=args.resume, tracking_uri=args.tracking_uri)


def run_evaluate(args):
    cfg = load_config(EvaluateConfig, args.config, _set(args.overrides, **{
        "model": args.model, "data.path": args.data, "out": args.out}))
    return evaluate(cfg, tracking_uri=args.tracking_uri, progress=not args.quiet)


def _trainer_opts(args) -> dict:
    """Options shared by finetune and semisup, as config keys."""
    return {"data.path": args.data, "out": args.out, "model.init": args.init,
            "label_fraction": args.label_fraction, "train.seed": args.seed}


def run_finetune(args):
    from .finetune import FinetuneConfig, finetune
    cfg = load_config(FinetuneConfig, args.config, _progress(args, _set(args.overrides, **_trainer_opts(args))))
    return finetune(cfg, resume=args.resume, tracking_uri=args.tracking_uri)


def run_semisup(args):
    from .semisup import SemisupConfig, semisup
    cfg = load_config(SemisupConfig, args.config, _progress(args, _set(
        args.overrides, method=args.method or (f"fixmatch-{args.heads}head" if args.heads else None),
        **_trainer_opts(args))))
    return semisup(cfg, resume=args.resume, tracking_uri=args.tracking_uri)
