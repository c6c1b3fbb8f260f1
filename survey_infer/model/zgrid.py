"""The redshift grid: softmax bins of width dz over [z_min, z_max)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ZGrid:
    """Bins ``[z_min + i·dz, z_min + (i+1)·dz)``, i = 0..n−1, with n = round((z_max − z_min)/dz).

    The default (0.9, 2.6, 0.003) has 567 bins, centres 0.9015 … 2.5995.
    """

    z_min: float = 0.9
    z_max: float = 2.6
    dz: float = 0.003

    @property
    def n(self) -> int:
        return int(round((self.z_max - self.z_min) / self.dz))

    @property
    def centres(self) -> np.ndarray:
        """Bin centres, float64, shape (n,)."""
        return self.z_min + self.dz * (np.arange(self.n, dtype=np.float64) + 0.5)

    def index(self, z: np.ndarray) -> np.ndarray:
        """Bin index of ``z`` (−1 below, n above the grid)."""
        i = np.floor((np.asarray(z, np.float64) - self.z_min) / self.dz).astype(np.int64)
        return np.where(i < 0, -1, np.where(i >= self.n, self.n, i))

    def to_dict(self) -> dict:
        return {"z_min": self.z_min, "z_max": self.z_max, "dz": self.dz, "n": self.n}

    @property
    def hash(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.centres, "<f8").tobytes()).hexdigest()[:16]
