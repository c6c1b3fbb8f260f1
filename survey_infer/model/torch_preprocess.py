"""The preprocessing of :mod:`survey_infer.preprocess` in torch, on the worker's device (issue 15 point 2).

Same steps, same dtypes, same constants as the numpy reference (continuum from clipped ivar-weighted block
means interpolated between block centres, empty blocks filled from the nearest usable block of the arm, the
robust norm, the five network channels, the per-object scalars, ``snr``, masked fraction); the arm/block layout
is the numpy module's own (``preprocess._layout``). Differences are summation order only:

* block sums are float64 sums of a zero-padded ``(n, blocks, max_block_len)`` gather (deterministic on every
  device: no atomics), where numpy uses ``np.add.reduceat``;
* medians ignoring NaN average the two middle values exactly as ``np.nanmedian`` does.

Agreement with :func:`survey_infer.preprocess.preprocess` (tested in ``tests/test_torch_hotpath.py``): network
channels and scalars within 1e-5 absolute plus 1e-5 relative (float32), the usable mask and ``n_good`` equal.
The numpy module stays the reference; ``PREPROCESSING_VERSION`` is unchanged because the definition is.
"""
from __future__ import annotations

import numpy as np
import torch

from ..instrument import Instrument
from ..preprocess import CLIP_NORM, CLIP_SIG, N_CHANNELS, _layout, n_scalars

__all__ = ["preprocess_torch", "TorchPreprocessed", "nanmedian_rows"]

_TABLES: dict[tuple, dict[str, torch.Tensor]] = {}


class TorchPreprocessed(dict):
    """Dict of tensors on the device: ``x`` (n, 5, W) float32, ``scalars`` (n, S) float32, ``snr`` (n,) float32,
    ``masked_fraction`` (n,) float32, ``n_good`` (n,) int64 (the fields of :class:`preprocess.Preprocessed`)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as exc:  # pragma: no cover
            raise AttributeError(k) from exc


def _tables(instrument: Instrument, device: torch.device) -> dict[str, torch.Tensor]:
    key = (instrument.grid_hash, str(device))
    if key not in _TABLES:
        block_of, left, right, wleft, nb = _layout(instrument)
        W = instrument.n_wave
        counts = np.bincount(block_of, minlength=nb)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        L = int(counts.max())
        pad = np.full((nb, L), W, np.int64)  # column W of the padded values is zero
        for b in range(nb):
            pad[b, :counts[b]] = np.arange(starts[b], starts[b] + counts[b])
        arms = []
        for sl in instrument.arm_slices():
            arms.append((int(block_of[sl.start]), int(block_of[sl.stop - 1]) + 1))
        _TABLES[key] = {
            "block_of": torch.from_numpy(block_of).to(device), "left": torch.from_numpy(left).to(device),
            "right": torch.from_numpy(right).to(device), "wleft": torch.from_numpy(wleft).to(device),
            "pad": torch.from_numpy(pad).to(device), "nb": nb, "arms": arms,
        }
    return _TABLES[key]


def _block_sums(values: torch.Tensor, tb: dict) -> torch.Tensor:
    """float64 sums of ``values`` (n, W) over the channel blocks → (n, nb)."""
    v = values.to(torch.float64)
    v = torch.cat([v, v.new_zeros(v.shape[0], 1)], dim=1)
    return v[:, tb["pad"]].sum(dim=2)


def nanmedian_rows(a: torch.Tensor) -> torch.Tensor:
    """Row-wise median ignoring NaN (mean of the two middle values for an even count, as ``np.nanmedian``);
    NaN for all-NaN rows. ``a`` (n, m) float64 → (n,) float64."""
    s, _ = torch.sort(a, dim=1)  # NaN sort last
    k = (~torch.isnan(a)).sum(dim=1)
    lo = torch.clamp((k - 1) // 2, min=0)
    hi = torch.clamp(k // 2, max=a.shape[1] - 1)
    med = (s.gather(1, lo[:, None])[:, 0] + s.gather(1, hi[:, None])[:, 0]) / 2.0
    return torch.where(k > 0, med, torch.full_like(med, float("nan")))


def _fill_empty_blocks(cb: torch.Tensor, has: torch.Tensor, tb: dict) -> torch.Tensor:
    """Blocks without usable pixels take the nearest usable block of the same arm (lower one on ties); 0 when
    the arm has none (``preprocess._fill_empty_blocks``)."""
    out = cb.clone()
    for b0, b1 in tb["arms"]:
        h = has[:, b0:b1]
        m = b1 - b0
        idx = torch.arange(m, device=cb.device)
        dist = (idx[:, None] - idx[None, :]).abs().to(torch.float64)  # (target, source)
        d = torch.where(h[:, None, :], dist[None], torch.full_like(dist, float("inf"))[None])
        near = torch.argmin(d, dim=2)  # first minimum: the lower block on ties, as numpy's argmin
        filled = cb[:, b0:b1].gather(1, near)
        any_ok = h.any(dim=1, keepdim=True)
        out[:, b0:b1] = torch.where(any_ok, filled, torch.zeros_like(filled))
    return out


@torch.inference_mode()
def preprocess_torch(flux: torch.Tensor | np.ndarray, ivar: torch.Tensor | np.ndarray, instrument: Instrument,
                     sky_mask: np.ndarray | None, mask: torch.Tensor | np.ndarray | None = None,
                     device: str | torch.device | None = None, n_iter: int = 2, clip: float = 2.5
                     ) -> TorchPreprocessed:
    """:func:`survey_infer.preprocess.preprocess` on ``device`` (default: the device of ``flux``).

    Parameters
    ----------
    flux, ivar : (n, W) arrays or tensors (1e-17 erg/s/cm²/Å and its inverse variance); non-finite = unusable.
    instrument : the grid; sky_mask : (W,) 1 = sky-line channel, or None; mask : (n, W) reduction mask, non-zero
        = bad.
    n_iter, clip : the continuum's clipping passes and threshold (``preprocess.continuum`` defaults).

    Returns
    -------
    :class:`TorchPreprocessed` (tensors on the device).
    """
    dev = torch.device(device) if device is not None else (flux.device if isinstance(flux, torch.Tensor)
                                                            else torch.device("cpu"))
    flux = torch.as_tensor(flux, device=dev).to(torch.float32)
    ivar = torch.as_tensor(ivar, device=dev).to(torch.float32)
    tb = _tables(instrument, dev)
    n, W = flux.shape
    finite = torch.isfinite(flux) & torch.isfinite(ivar)
    good = torch.where(finite, ivar, torch.zeros_like(ivar)) > 0
    if mask is not None:
        good &= torch.as_tensor(mask, device=dev) == 0
    if sky_mask is not None:
        good &= ~torch.as_tensor(np.asarray(sky_mask, dtype=bool), device=dev)[None, :]
    zero = torch.zeros((), dtype=torch.float32, device=dev)
    ivar = torch.where(good, ivar, zero)
    flux = torch.where(good, flux, zero)
    # ---- continuum (preprocess.continuum) ----
    w, f = ivar.clone(), flux.clone()
    for it in range(n_iter + 1):
        sw = _block_sums(w, tb)
        sf = _block_sums(w * f, tb)
        cb = torch.where(sw > 0, sf / torch.where(sw > 0, sw, torch.ones_like(sw)), torch.zeros_like(sf))
        if it == n_iter:
            break
        resid = (f - cb[:, tb["block_of"]].to(torch.float32)) * torch.sqrt(w)
        w = torch.where(resid.abs() > clip, zero, w)
    cbf = _fill_empty_blocks(cb, sw > 0, tb)
    wl = tb["wleft"]
    cont = (cbf[:, tb["left"]] * wl + cbf[:, tb["right"]] * (1.0 - wl)).to(torch.float32)
    cnt = _block_sums((w > 0).to(torch.float64), tb)
    ivb = torch.where(cnt > 0, sw / torch.where(cnt > 0, cnt, torch.ones_like(cnt)), torch.zeros_like(sw))
    # ---- the rest of preprocess.preprocess ----
    sqiv = torch.sqrt(ivar)
    sigma = torch.where(good, 1.0 / torch.where(good, sqiv, torch.ones_like(sqiv)), zero)
    n_good = good.sum(dim=1)
    has = cnt > 0
    nan = torch.full((), float("nan"), dtype=torch.float64, device=dev)
    sig_b = torch.where(has, 1.0 / torch.sqrt(torch.where(ivb > 0, ivb, torch.ones_like(ivb))), nan)
    cb_n = torch.where(has, cb, nan)
    norm = nanmedian_rows(torch.sqrt(cb_n ** 2 + sig_b ** 2))
    norm = torch.where(torch.isfinite(norm) & (norm > 0), norm, torch.ones_like(norm)).to(torch.float32)
    inv = (1.0 / norm)[:, None]
    resid = flux - cont
    gf = good.to(torch.float32)
    x = torch.empty((n, N_CHANNELS, W), dtype=torch.float32, device=dev)
    x[:, 0] = torch.clamp(resid * sqiv, -CLIP_SIG, CLIP_SIG) * gf
    x[:, 1] = torch.clamp(resid * inv, -CLIP_NORM, CLIP_NORM) * gf
    x[:, 2] = torch.clamp(cont * inv, -CLIP_NORM, CLIP_NORM) * gf
    x[:, 3] = torch.clamp(sigma * inv, 0, CLIP_NORM) * gf
    x[:, 4] = gf
    sc = torch.zeros((n, n_scalars(instrument)), dtype=torch.float32, device=dev)
    sc[:, 0] = torch.log10(norm)
    for a, (b0, b1) in enumerate(tb["arms"]):
        c_med = nanmedian_rows(cb_n[:, b0:b1])
        s_med = nanmedian_rows(sig_b[:, b0:b1])
        sc[:, 1 + 2 * a] = torch.where(torch.isfinite(c_med), torch.asinh(torch.nan_to_num(c_med)),
                                       torch.zeros_like(c_med)).to(torch.float32)
        ok = torch.isfinite(s_med) & (s_med > 0)
        sc[:, 2 + 2 * a] = torch.where(ok, torch.log10(torch.where(ok, s_med, torch.ones_like(s_med))),
                                       torch.zeros_like(s_med)).to(torch.float32)
    sc[:, -1] = (n_good / float(W)).to(torch.float32)
    snr = nanmedian_rows(cb_n / sig_b)
    snr = torch.where(n_good > 0, snr, nan).to(torch.float32)
    masked_fraction = (1.0 - n_good.to(torch.float64) / float(W)).to(torch.float32)
    return TorchPreprocessed(x=x, scalars=sc, snr=snr, masked_fraction=masked_fraction, n_good=n_good)

