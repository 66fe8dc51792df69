"""The autoencoders of the baselines: dense (DEC/IDEC, paper 000) and convolutional (CDEC/CIDEC, paper 001)."""
from __future__ import annotations

import torch
from torch import nn

from ...errors import UsclfError


def check_conv_size(size: tuple[int, int], pools: int) -> None:
    """One-line error unless both image sides survive `pools` 2x2 max-pools exactly."""
    f = 2 ** pools
    if size[0] % f or size[1] % f:
        raise UsclfError(f"convolutional autoencoder: {pools} pooling steps need image sides that are multiples "
                         f"of {f}, got {size[0]}x{size[1]} (ingest with --size 64 or 128)")


class DenseAE(nn.Module):
    """Encoder [a, d1, ..., dL] with ReLU between layers and a mirrored decoder. The embedding and the
    reconstruction layers are linear, as in the official DEC/IDEC code (paper 000 says ReLU 'for all')."""

    def __init__(self, in_dim: int, dims: list[int]):
        super().__init__()
        enc, dec, sizes = [], [], [in_dim, *dims]
        for i in range(len(dims)):
            enc += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
        for i in range(len(dims), 0, -1):
            dec += [nn.Linear(sizes[i], sizes[i - 1]), nn.ReLU()]
        self.encoder, self.decoder = nn.Sequential(*enc[:-1]), nn.Sequential(*dec[:-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


class ConvAE(nn.Module):
    """Paper 001's CAE: per filter count a 3x3 conv + ReLU + 2x2 max-pool; a dense code; a decoder of
    bilinear x2 upsampling + 3x3 conv per block, ReLU inside and a sigmoid output. The code layer is linear
    (as the embedding of the official DCEC code), the paper only says 'ReLU in all layers except the last'."""

    def __init__(self, size: tuple[int, int], filters: list[int], code: int):
        super().__init__()
        check_conv_size(size, len(filters))
        f = 2 ** len(filters)
        enc, ch = [], 1
        for n in filters:
            enc += [nn.Conv2d(ch, n, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            ch = n
        self.grid = (ch, size[0] // f, size[1] // f)
        flat = ch * self.grid[1] * self.grid[2]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, code))
        self.expand = nn.Sequential(nn.Linear(code, flat), nn.ReLU())
        dec, outs = [], [*reversed(filters[:-1]), 1]
        for i, n in enumerate(outs):
            dec += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(ch, n, 3, padding=1),
                    nn.ReLU() if i < len(outs) - 1 else nn.Sigmoid()]
            ch = n
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(self.expand(z).view(-1, *self.grid))
