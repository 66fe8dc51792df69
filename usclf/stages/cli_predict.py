"""CLI glue for `usclf predict` (exam ids are hashed with the salt in env USCLF_PATIENT_SALT, as in ingest)."""
from __future__ import annotations

from .predict import PredictResult, predict


def run_predict(args) -> PredictResult:
    res = predict(args.model, args.input, args.out, batch_size=args.batch_size, device=args.device,
                  progress=not args.quiet, workers=args.workers, dicom_sr=args.dicom_sr)
    done = f" ({res.n_units_done} already done before this run)" if res.n_units_done else ""
    print(f"predicted {res.n_predicted} frames, {res.n_skipped} rows skipped with a reason, over "
          f"{res.n_units} folders{done} in {res.seconds:.1f} s")
    print(f"  rows {res.out}\n  exams {res.exams}")
    if res.sr is not None:
        other = f"; {res.sr.n_non_dicom_files} non-DICOM files have rows only" if res.sr.n_non_dicom_files else ""
        print(f"  DICOM SR: {res.sr.n_studies} structured reports (one per study) in {args.dicom_sr}{other}")
    return res
