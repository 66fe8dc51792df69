"""`usclf export` glue: options -> checks -> export_model (registering before the rename) -> a short report."""
from __future__ import annotations

from ..deploy.export import FORMATS, export_model
from ..deploy.outputs import check_out
from ..errors import UsclfError


def run_export(args):
    extra = list(getattr(args, "overrides", None) or [])
    if extra:
        raise UsclfError(f"unknown argument {extra[0]!r}: export takes no key=value settings (see usclf export "
                         "--help)")
    if args.register is not None and args.format != "mlflow":
        raise UsclfError("--register logs an MLflow model: use it with --format mlflow")
    if args.format in FORMATS:
        check_out(args.out, args.format, args.model, args.data)   # cheap path checks before the registry
    registered = []
    register = None
    if args.register is not None:
        from ..deploy.registry import check_registry, register_model
        check_registry(args.register, args.alias, args.tracking_uri, args.model)

        def register(meta: dict) -> None:  # after the parity check, before the export is renamed into place
            registered.append(register_model(args.model, args.register, meta, tracking_uri=args.tracking_uri,
                                             alias=args.alias))
    res = export_model(args.model, args.format, args.out, data=args.data, tol=args.tol, overwrite=args.overwrite,
                       before_commit=register)
    where = f"{res.n_checked} cache images of {args.data}" if args.data else f"{res.n_checked} seeded random frames"
    print(f"exported {args.model} -> {res.out} ({res.fmt})")
    print(f"  checked against PyTorch on {where}: max |score difference| {res.max_abs_diff:.1e}, "
          f"labels equal {100 * res.label_agreement:.1f} %")
    for r in registered:
        f1 = "none recorded" if r.val_f1 != r.val_f1 else f"{r.val_f1:.4f}"
        state = "now the champion" if r.promoted else f"champion stays version {r.champion}"
        print(f"  registered as {r.name} version {r.version} (validation F1 {f1}); {state}: "
              f"models:/{r.name}@{args.alias}")
    return res
