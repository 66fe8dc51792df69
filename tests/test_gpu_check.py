"""pipelines/gpu_check.sh --dry-run: the GPU check's code path on the CPU at 32 px (incl. the 2-process run
over gloo). Marked slow: about 70 s on this 2-core CI machine while it trains in the background."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_prints_every_number():
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "pipelines" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for line in ("[DRY RUN]", "raw two-view step", "full pretrain step", "full semisup step", "loader ceiling",
                 "paper protocol (85000 images x 100 epochs", "DDP 2 processes (gloo)"):
        assert line in out, (line, out)
    assert "nan im/s" not in out
