"""`train.sync_bn`: BatchNorm statistics over the global batch under DDP, on any device.

With plain DDP every rank normalises its share of the batch with that share's own mean and variance,
so W processes on a global batch compute a different step from one process on it. Synchronised
BatchNorm normalises with the statistics of all ranks' rows, which makes the step equal to the
one-process step (tests/test_ddp_stages.py). On CUDA this is torch's `SyncBatchNorm`; torch's runs on
GPUs only, so elsewhere (gloo on the CPU) `GlobalBatchNorm2d` does the same with `gather_with_grad`.
Nothing changes without DDP: the layers are converted only when the Trainer runs under torchrun.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .distributed import gather_with_grad, get_dist_info

log = logging.getLogger("usclf.train")


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are the mean and (biased) variance over every rank's
    rows; the running statistics are updated with them as BatchNorm2d does. In eval mode or without
    DDP it is BatchNorm2d. Same parameters, buffers and state dict as BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and get_dist_info().distributed):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        xd = x.double()  # sums of squares in float64: E[x^2] - E[x]^2 without cancellation
        count = torch.full((1,), float(x.numel() // max(c, 1)), dtype=torch.float64, device=x.device)
        local = torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), count])
        stats = gather_with_grad(local[None]).sum(dim=0)  # rows of all ranks; gradients flow back to each
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        shape = (1, c, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers synchronised across ranks (in place where possible; returns the
    model to use). CUDA: torch's SyncBatchNorm. Otherwise every plain BatchNorm2d becomes a
    GlobalBatchNorm2d (a class swap: parameters, buffers and hooks are kept); other BatchNorm kinds
    (e.g. timm's BatchNormAct2d) stay per rank, with a warning."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    other = []
    for name, m in model.named_modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm2d):
            other.append(name or type(m).__name__)
    if other:
        log.warning("train.sync_bn: %d BatchNorm layer(s) of another kind keep per-rank statistics (e.g. %s)",
                    len(other), other[0])
    return model
