"""`pipelines/bench.py archive` end to end on a tiny export (60 frames): every step prints its line and
predict's peak RSS does not grow with the input (the full-size run is documented in docs/performance.md)."""
from __future__ import annotations

import re

import pytest

from usclf.data.transforms import AugmentConfig
from usclf.studies.bench import main


@pytest.mark.slow
def test_archive_bench_runs_every_step_tiny(tmp_path, capsys):
    assert main(["archive", "--frames", "60", "--seconds", "0.2", "--batch", "8", "--tmp", str(tmp_path / "new" / "scratch")]) == 0  # created
    out = capsys.readouterr().out
    for line in ("export:", "ingest workers=0", "ingest workers=2", "cache at 224 px", "model forward alone",
                 "predict tenth", "predict all", "peak RSS all / tenth"):
        assert line in out, (line, out)
    backends = ["cpu", "device"] if "backend" in AugmentConfig.__dataclass_fields__ else ["cpu"]
    for b in backends:
        assert len(re.findall(rf"loader 224 px .* backend={b} ", out)) == 2, out
    images = [int(m) for m in re.findall(r"predict \w+ +\(.*?\): (\d+) images", out)]
    assert len(images) == 2 and 0 < images[0] < images[1]
    ratio = float(re.search(r"peak RSS all / tenth: ([\d.]+)", out).group(1))
    assert ratio <= 1.2, out
    assert not list((tmp_path / "new" / "scratch").iterdir())   # scratch data removed (the folder was created)
