"""Which machine a study ran on: float results repeat byte for byte only on the same CPU, kernel level and threads."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_fingerprint(short: bool = False) -> str:
    """CPU, torch's CPU kernel level and thread count (short: the form of docs/baselines/results.csv's rows,
    which also names a GPU; long: evidence runs' machine.txt, which names the torch version)."""
    import torch

    cap, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    if not short:
        return f"{cpu_model()}; torch {torch.__version__} CPU kernels {cap}, {threads} threads"
    text = f"{cpu_model()}; torch CPU {cap}; {threads} threads"
    return text + (f"; {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
