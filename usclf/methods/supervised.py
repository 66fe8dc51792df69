"""`supervised`: the finetune family's method (paper Sec. 2.2.4): BCE with logits over the C+1 classes.

Stateless, no options; it is a Method like the others so the Trainer treats every family alike (its
`state_dict` is checkpointed, `{}` here)."""
from __future__ import annotations

from ..losses.supervised import multilabel_bce
from ..train.distributed import mean_weights
from .base import Method


class Supervised(Method):
    name = "supervised"

    def __call__(self, model, batch, ctx):
        """BCE on the weak view (under DDP weighted by this rank's share of the global batch, so the averaged
        gradient is that of the mean over the global batch)."""
        x = batch["views"][0]
        loss = multilabel_bce(model(x), batch["y"])
        if ctx is not None and ctx.world_size > 1:
            loss = loss * mean_weights([x.shape[0]], x.device)[0]
        return loss, {}
