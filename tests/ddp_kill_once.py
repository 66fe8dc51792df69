"""`usclf` under torchrun, with one rank that dies once (tests/test_ddp_stages.py, elastic restarts).

USCLF_TEST_KILL="RANK:STEP:MARKER": the process of rank RANK exits (os._exit, no clean-up, as a killed
process would) right after its optimiser step STEP, if MARKER does not exist yet (it creates it first, so
the job that torchrun restarts runs through). Not a test module: torchrun runs it as the worker script.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from usclf.cli import main
from usclf.train import loop

rank, step, marker = os.environ["USCLF_TEST_KILL"].split(":", 2)
_step = loop.Trainer._train_step


def _step_then_die(self, batch, ctx):
    out = _step(self, batch, ctx)
    if self.dist.rank == int(rank) and ctx.step + 1 == int(step) and not Path(marker).exists():
        Path(marker).write_text(f"rank {rank} died after step {step}\n")
        os._exit(17)
    return out


loop.Trainer._train_step = _step_then_die
sys.exit(main(sys.argv[1:]))
