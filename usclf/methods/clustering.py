"""Deep-clustering methods for `usclf pretrain`: PICA and LSD (paper Sec. 2.2, Eqs. 1-7)."""
from __future__ import annotations

from ..errors import UsclfError
from ..losses.dirichlet import lsd_loss
from ..losses.pica import pica_loss


class PICA:
    """L = L_CE + lam * L_NE on the two views' cluster probabilities (Huang et al. CVPR 2020)."""
    name = "pica"

    def __init__(self, lam: float, epsilon: float):
        if not lam >= 0:
            raise UsclfError(f"lam (lambda) must be >= 0, got {lam}")
        self.lam, self.epsilon = float(lam), float(epsilon)

    def loss(self, x, y):
        return pica_loss(x, y, lam=self.lam)


class LSD(PICA):
    """PICA with L_NE replaced by the symmetric-Dirichlet prior L_SD, alpha = 1 + epsilon (Eq. 6)."""
    name = "lsd"

    def __init__(self, lam: float, epsilon: float):
        super().__init__(lam, epsilon)
        if not epsilon > 0:
            raise UsclfError(f"LSD needs alpha = 1 + epsilon > 1; got epsilon={epsilon}")

    def loss(self, x, y):
        return lsd_loss(x, y, lam=self.lam, alpha=1.0 + self.epsilon)
