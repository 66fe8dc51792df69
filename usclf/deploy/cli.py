"""`usclf export` glue: options -> export_model (+ register_model) -> a short report on stdout."""
from __future__ import annotations

from ..errors import UsclfError
from .export import export_model


def run_export(args):
    if args.register and args.format != "mlflow":
        raise UsclfError("--register logs an MLflow model: use it with --format mlflow")
    res = export_model(args.model, args.format, args.out, data=args.data, tol=args.tol, overwrite=args.overwrite)
    where = f"{res.n_checked} cache images of {args.data}" if args.data else f"{res.n_checked} seeded random frames"
    print(f"exported {args.model} -> {res.out} ({res.fmt})")
    print(f"  checked against PyTorch on {where}: max |score difference| {res.max_abs_diff:.1e}, "
          f"labels equal {100 * res.label_agreement:.1f} %")
    if args.register:
        from .registry import register_model
        r = register_model(args.model, args.register, res.meta, tracking_uri=args.tracking_uri, alias=args.alias)
        f1 = "none recorded" if r.val_f1 != r.val_f1 else f"{r.val_f1:.4f}"
        state = "now the champion" if r.promoted else f"champion stays version {r.champion}"
        print(f"  registered as {r.name} version {r.version} (validation F1 {f1}); {state}: "
              f"models:/{r.name}@{args.alias}")
    return res
