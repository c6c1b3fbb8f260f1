"""Counter-based dropout masks: keep/drop decided by a hash of (seed, object_id, sample t, unit).

Masks never touch torch's global RNG, so an object's MC samples do not depend on its batch neighbours, its slot,
the chunking, the number of workers or resumes. The hash is SplitMix64 on uint64 (wrap-around arithmetic in
numpy, identical on every platform).
"""
from __future__ import annotations

import numpy as np

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, object_id: np.ndarray, n_samples: int, n_units: int, stream: int = 0) -> np.ndarray:
    """Uniform [0, 1) numbers, shape ``(len(object_id), n_samples, n_units)``, float64.

    Parameters
    ----------
    seed : int
        Run seed.
    object_id : ndarray of int64
        Global object identifiers (the key, not the position).
    n_samples : int
        MC samples T.
    n_units : int
        Units per sample.
    stream : int
        Separates independent mask families (e.g. different layers).
    """
    oid = np.asarray(object_id, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        k = _splitmix64(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64((stream * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF)) ^ oid)
        t = np.arange(n_samples, dtype=np.uint64)
        u = np.arange(n_units, dtype=np.uint64)
        key = _splitmix64(k[:, None] ^ (t[None, :] * np.uint64(0xD1B54A32D192ED03)))
        h = _splitmix64(key[:, :, None] ^ (u[None, None, :] * np.uint64(0x8CB92BA72F3D8DD7)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def keep_masks(seed: int, object_id: np.ndarray, n_samples: int, n_units: int, p_drop: float,
               stream: int = 0) -> np.ndarray:
    """Inverted-dropout multipliers (0 or 1/(1−p)), float32, shape (n, T, units)."""
    u = uniform(seed, object_id, n_samples, n_units, stream)
    return np.where(u >= p_drop, np.float32(1.0 / (1.0 - p_drop)), np.float32(0.0)).astype(np.float32)
