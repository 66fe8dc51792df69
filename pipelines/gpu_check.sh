#!/usr/bin/env bash
# One-call GPU check: ResNet18 images/s at 224 px (raw two-view step, full pretrain and semisup steps with
# data; AMP bf16 + channels_last, augment.backend=device), peak GPU memory, the data loader's ceiling, and
# the paper protocol's estimated wall time; with >= 2 GPUs also a 2-process nccl torchrun run.
# At most ~8 minutes on one GPU (each part under `timeout`).
#
#   pipelines/gpu_check.sh              # on a CUDA machine
#   pipelines/gpu_check.sh --dry-run    # the same code path on the CPU at 32 px (CI: tests/test_gpu_check.py),
#                                       # the 2-process part over gloo
# Extra arguments go to usclf/studies/gpu_check.py (--size, --batch, --exams, --steps, --workers, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
DRY=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && DRY=1; done
if [[ $DRY == 1 ]]; then LIMIT=150; NPROC=2; else
  LIMIT=420
  NPROC=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
timeout "$LIMIT" "$PY" -m usclf.studies.gpu_check "$@"
if [[ "$NPROC" -ge 2 ]]; then
  # 2 processes, one GPU each (nccl), or gloo on the CPU in the dry run; --standalone: local rendezvous
  timeout 150 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m usclf.studies.gpu_check --ddp "$@"
else
  echo "one GPU visible: the 2-process nccl run is skipped"
fi
