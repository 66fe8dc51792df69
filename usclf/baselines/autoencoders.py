"""The autoencoders of the baselines: dense (DEC/IDEC, paper 000) and convolutional (CDEC/CIDEC, paper 001;
DCEC, Guo et al. 2017; IDCEC, paper 004)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UsclfError


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


def check_strided_size(size: tuple[int, int]) -> None:
    """One-line error unless both sides survive the three stride-2 steps of the DCEC / IDCEC autoencoders."""
    if min(size) < 8:
        raise UsclfError(f"DCEC/IDCEC autoencoder: image sides must be >= 8 px, got {size[0]}x{size[1]}")


class GuoConvAE(nn.Module):
    """The DCEC autoencoder (pooled=False: 5x5/5x5/3x3 convs with stride 2 and ReLU, official XifengGuo/DCEC)
    or IDCEC's (pooled=True: 5x5 stride-1 convs + LeakyReLU(0.2) + 2x2 max-pool twice, then the 3x3 stride-2
    ReLU conv, official hulu88/IDCEC). Linear code of size `code`, a ReLU dense layer back to the last
    feature map, a mirrored decoder and a linear output. Any side >= 8 px: the third conv is 'valid' unless
    the side is a multiple of 8 (the official rule, per side) and the decoder restores each size exactly."""

    def __init__(self, size: tuple[int, int], filters: list[int], code: int, pooled: bool = False):
        super().__init__()
        check_strided_size(size)
        if len(filters) != 3:
            raise UsclfError(f"DCEC/IDCEC autoencoder: three filter counts expected, got {filters}")
        f1, f2, f3 = filters
        pad3 = tuple(1 if s % 8 == 0 else 0 for s in size)
        s0 = tuple(size)
        s1 = tuple((s + 1) // 2 for s in s0)       # 'same' stride-2 conv or 'same' 2x2 pool: ceil(s / 2)
        s2 = tuple((s + 1) // 2 for s in s1)
        s3 = tuple((s + 2 * p - 3) // 2 + 1 for s, p in zip(s2, pad3))
        act = (lambda: nn.LeakyReLU(0.2)) if pooled else nn.ReLU
        if pooled:
            enc = [nn.Conv2d(1, f1, 5, padding=2), act(), nn.MaxPool2d(2, ceil_mode=True),
                   nn.Conv2d(f1, f2, 5, padding=2), act(), nn.MaxPool2d(2, ceil_mode=True)]
        else:
            enc = [nn.Conv2d(1, f1, 5, stride=2, padding=2), act(), nn.Conv2d(f1, f2, 5, stride=2, padding=2), act()]
        enc += [nn.Conv2d(f2, f3, 3, stride=2, padding=pad3), nn.ReLU()]
        self.grid = (f3, *s3)
        flat = f3 * s3[0] * s3[1]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, code))
        self.expand = nn.Sequential(nn.Linear(code, flat), nn.ReLU())

        def up(cin, cout, k, pad, src, dst):
            """Stride-2 transposed conv from src to exactly dst (output_padding absorbs the odd sides)."""
            extra = tuple(d - ((s - 1) * 2 - 2 * p + k) for s, d, p in zip(src, dst, pad))
            return nn.ConvTranspose2d(cin, cout, k, stride=2, padding=pad, output_padding=extra)

        if pooled:  # official: deconv3 (stride 2) + LReLU + upsample, deconv2 + LReLU + upsample, deconv1
            # (the official stride-1 'same' Conv2DTranspose layers are plain 'same' convs)
            dec = [up(f3, f2, 3, pad3, s3, s2), act(), nn.Upsample(size=s1), nn.Conv2d(f2, f1, 5, padding=2), act(),
                   nn.Upsample(size=s0), nn.Conv2d(f1, 1, 5, padding=2)]
        else:
            dec = [up(f3, f2, 3, pad3, s3, s2), act(), up(f2, f1, 5, (2, 2), s2, s1), act(),
                   up(f1, 1, 5, (2, 2), s1, s0)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(self.expand(z).view(-1, *self.grid))
