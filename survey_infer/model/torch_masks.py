"""Counter-based dropout masks in torch int64 ops, on any device, bit-exact with :mod:`survey_infer.model.mc`.

:mod:`.mc` hashes (seed, stream, object_id, sample t, unit) with SplitMix64 on numpy ``uint64``. This module
computes the same hash with ``torch.int64`` tensors so the masks are made where the network runs (no host
work, no host→device copy of ``B·T·units`` floats per micro-batch):

* additions and multiplications wrap modulo 2⁶⁴ in two's complement, which gives the same 64 bits as unsigned
  wrap-around arithmetic (PyTorch's integer kernels on CPU and CUDA wrap; the CI test checks bit identity on
  CPU and ``tests/test_gpu.py`` on the GPU);
* the logical right shift of a ``uint64`` is an arithmetic right shift of the ``int64`` followed by a mask of
  the top ``s`` bits;
* the keep decision ``u >= p`` with ``u = (h >> 11) · 2⁻⁵³`` is made in integers, ``(h >> 11) >= ⌈p · 2⁵³⌉``
  (both sides exact, so it is the same decision without float64 work on the device).

SplitMix64: G. Steele, D. Lea, C. Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the
constants are those of ``java.util.SplittableRandom`` / Vigna's ``splitmix64.c``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["splitmix64", "uniform", "keep_masks", "make_masks"]

_U64 = 1 << 64


def _s64(c: int) -> int:
    """The int64 with the same 64 bits as the unsigned constant ``c``."""
    c &= _U64 - 1
    return c - _U64 if c >= 1 << 63 else c


_GOLD = _s64(0x9E3779B97F4A7C15)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)
_STREAM = 0x2545F4914F6CDD1D
_T_MUL = _s64(0xD1B54A32D192ED03)
_U_MUL = _s64(0x8CB92BA72F3D8DD7)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits by ``s`` (0 < s < 64)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (the bits of :func:`survey_infer.model.mc._splitmix64`).

    Parameters
    ----------
    x : torch.Tensor, dtype int64, any shape and device

    Returns
    -------
    torch.Tensor, int64, same shape: the hash, bit for bit the uint64 result reinterpreted as int64.
    """
    z = x + _GOLD
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def _hash(seed: int, object_id: torch.Tensor, n_samples: int, n_units: int, stream: int) -> torch.Tensor:
    """53-bit hash ``h >> 11`` per (object, sample, unit) as int64, shape (n, T, units)."""
    dev = object_id.device
    k0 = _s64((seed & (_U64 - 1)) ^ ((stream * _STREAM) & (_U64 - 1)))
    k = splitmix64(splitmix64(torch.tensor(k0, dtype=torch.int64, device=dev)) ^ object_id.to(torch.int64))
    t = torch.arange(n_samples, dtype=torch.int64, device=dev) * _T_MUL
    u = torch.arange(n_units, dtype=torch.int64, device=dev) * _U_MUL
    key = splitmix64(k[:, None] ^ t[None, :])
    h = splitmix64(key[:, :, None] ^ u[None, None, :])
    return _srl(h, 11)


def uniform(seed: int, object_id: torch.Tensor, n_samples: int, n_units: int, stream: int = 0) -> torch.Tensor:
    """Uniform [0, 1) numbers, shape ``(len(object_id), n_samples, n_units)``, float64, on ``object_id``'s device.

    Bit for bit :func:`survey_infer.model.mc.uniform` (same arguments; ``object_id`` an int64 tensor).
    """
    return _hash(seed, object_id, n_samples, n_units, stream).to(torch.float64) * (1.0 / 9007199254740992.0)


def keep_threshold(p_drop: float) -> int:
    """Integer ``k`` with ``(h >> 11) >= k  ⇔  (h >> 11)·2⁻⁵³ >= p_drop`` (exact: ``p·2⁵³`` is a float64)."""
    return math.ceil(float(p_drop) * 9007199254740992.0)


def keep_masks(seed: int, object_id: torch.Tensor, n_samples: int, n_units: int, p_drop: float,
               stream: int = 0) -> torch.Tensor:
    """Inverted-dropout multipliers (0 or 1/(1−p)), float32, shape (n, T, units), on ``object_id``'s device.

    Bit for bit :func:`survey_infer.model.mc.keep_masks`.
    """
    keep = _hash(seed, object_id, n_samples, n_units, stream) >= keep_threshold(p_drop)
    scale = torch.tensor(1.0 / (1.0 - p_drop), dtype=torch.float64).to(torch.float32).item()
    return keep.to(torch.float32) * scale


def make_masks(mask_units: dict[str, int], streams: dict[str, int], p_drop: float, object_id: torch.Tensor,
               valid: torch.Tensor, T: int, seed: int) -> dict[str, torch.Tensor]:
    """Masks for one micro-batch on the device: :func:`survey_infer.model.inference.make_masks`, bit for bit.

    Parameters
    ----------
    mask_units : dict name → units per sample (``NetConfig.mask_units()``).
    streams : dict name → stream number (``inference.STREAMS``).
    p_drop : dropout probability.
    object_id : (B,) int64 tensor; valid : (B,) bool tensor (padding slots get ones).
    T : MC samples; seed : run seed (``T == 1`` with ``seed < 0``: all ones, the deterministic pass).

    Returns
    -------
    dict name → (B, T, units) float32 tensor on ``object_id``'s device.
    """
    out = {}
    B = object_id.shape[0]
    for name, units in mask_units.items():
        if T == 1 and seed < 0:
            out[name] = torch.ones((B, 1, units), dtype=torch.float32, device=object_id.device)
            continue
        m = keep_masks(seed, object_id, T, units, p_drop, stream=streams[name])
        out[name] = torch.where(valid[:, None, None], m, torch.ones((), dtype=torch.float32, device=m.device))
    return out
