"""`pipelines/bench.py pipeline` end to end on a few tiny exams: its training steps really train (they once
ran under the entry point's no_grad and failed) and every line of the report is printed."""
from __future__ import annotations

import re

from usclf.studies.bench import main


def test_pipeline_bench_prints_the_step_ratio_and_the_loader_rates(capsys):
    assert main(["pipeline", "--size", "32", "--exams", "6"]) == 0
    out = capsys.readouterr().out
    ratio = re.search(r"full pretrain step \(loader \+ trainer\)\s+[\d.]+ im/s\s+= ([\d.]+) of the raw step", out)
    assert ratio and float(ratio.group(1)) > 0, out
    for line in ("raw model step (random tensors)", "loader from the uint8 cache", "naive decode-every-step loader"):
        assert line in out, (line, out)



def test_decode_rate_counts_the_images_predict_predicts(tmp_path):
    """The predict bench's decode-alone rate is over the same images `usclf predict` predicts from the folders."""
    from usclf.data.simulate import SimulateConfig, simulate
    from usclf.predict.run import bench_predict
    from usclf.studies.bench import decode_rate

    simulate(tmp_path / "raw", SimulateConfig(exams=2, size=48, seed=0), progress=False)
    rate, n = decode_rate(tmp_path / "raw", 32)
    assert rate > 0 and n == bench_predict(tmp_path / "raw", tmp_path, batch_size=8, size=32)["images"] > 0
