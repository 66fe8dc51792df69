"""Batched eval-transform inference over rows of a cached dataset (evaluate, suggest, the baselines)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data.cache import CachedDataset
from ..data.dataset import UltrasoundDataset
from ..data.sampler import make_loader
from ..data.transforms import AugmentConfig


@torch.no_grad()
def infer(model: torch.nn.Module, ds: CachedDataset, rows: np.ndarray, aug: AugmentConfig, batch_size: int = 64,
          workers: int = 0, device: str | torch.device = "cpu", progress: bool = False, desc: str = "infer"
          ) -> dict[str, np.ndarray]:
    """Eval-transform forward pass over `rows`: {'features': N x D, 'out': head output(s) as numpy}.

    Two-head models give 'combo' and 'out' (multi-label logits); cluster heads give probabilities.
    """
    model.eval().to(device)
    loader = make_loader(UltrasoundDataset(ds, rows, views=("eval",), aug=aug), None, workers,
                         batch_size=batch_size)
    feats, outs, combos = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        x = batch["views"][0].to(device)
        f = model.features(x)
        o = model.head(f)
        if isinstance(o, tuple):
            combos.append(o[0].float().cpu())
            o = o[1]
        feats.append(f.float().cpu())
        outs.append(o.float().cpu())
    res = {"features": torch.cat(feats).numpy(), "out": torch.cat(outs).numpy()}
    if combos:
        res["combo"] = torch.cat(combos).numpy()
    return res
