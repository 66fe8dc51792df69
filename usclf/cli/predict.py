"""CLI glue for `usclf predict` (exam ids are hashed with the salt in env USCLF_PATIENT_SALT, as in ingest).

Under `torchrun --nproc-per-node N` the folders are shared out over the ranks (predict/shard.py); rank 0 prints.
"""
from __future__ import annotations

import os

from ..predict.run import PredictResult
from ..predict.shard import predict_any


def run_predict(args) -> PredictResult:
    res = predict_any(args.model, args.input, args.out, batch_size=args.batch_size, device=args.device,
                      progress=not args.quiet, workers=args.workers, dicom_sr=args.dicom_sr)
    if os.environ.get("RANK", "0") not in ("", "0"):
        return res
    done = f" ({res.n_units_done} already done before this run)" if res.n_units_done else ""
    print(f"predicted {res.n_predicted} frames, {res.n_skipped} rows skipped with a reason, over "
          f"{res.n_units} folders{done} in {res.seconds:.1f} s")
    print(f"  rows {res.out}\n  exams {res.exams}")
    if res.sr is not None:
        sr = res.sr
        other = f"; {sr.n_non_dicom_files} non-DICOM files have rows only" if sr.n_non_dicom_files else ""
        if sr.n_studies == 0:
            print(f"  DICOM SR: 0 structured reports in {args.dicom_sr}: {sr.why}")
        else:
            refused = f"; {sr.n_refused} not reported, each with its reason in {sr.skipped}" if sr.n_refused else ""
            print(f"  DICOM SR: {sr.n_studies} structured reports (one per study) in {args.dicom_sr}{other}{refused}")
    return res
