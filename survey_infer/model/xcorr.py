"""Template χ² over the redshift grid, by FFT on a log-λ grid (the classical template fit, built into the net).

A redshift is a shift in ln λ. The spectrum (inverse-variance weighted, in the network's normalised units) is
binned onto a uniform ln λ grid of step ``dlnw``; for every trial shift ``s`` (ln(1+z) = ln(1+z_top) − s·dlnw)
a linear fit of ``M`` rest-frame templates ``t_j`` gives

    b_j(s) = Σ_i d_i t_j(i + s),    A_jk(s) = Σ_i W_i t_j(i + s) t_k(i + s),    Δχ²(s) = bᵀ A⁻¹ b,

with ``d = W·f`` and ``W`` the summed inverse variance per log bin: Δχ² is the χ² improvement of the best
template combination over "no signal" (Redrock's χ²(z) scan, Bolton et al. 2012 AJ 144 144 §5, up to the
constant Σ W f²). Every ``b_j`` and ``A_jk`` is a cross-correlation, computed for all shifts at once by FFT
(cost O(n log n) per correlation, n = 4096 for MOONS at dlnw = 5e-4: ≈ 5 MFLOP per spectrum for two sets of
five templates, against 107 MFLOP for the CNN trunk).

Two template sets are scanned:

* ``hp`` (high-pass): the spectrum minus its weighted running mean over ``_HP_WIDTH`` in ln λ, against the
  templates with the same running mean removed — absorption lines and sharp features, insensitive to smooth
  flux-calibration errors;
* ``full``: the whole normalised spectrum (channels 1 + 2) against the templates — adds the 4000 Å and Balmer
  breaks and the continuum shape.

Per redshift bin the maximum Δχ² over the shifts inside the bin is taken, and the head receives per set
``(Δχ² − max_z Δχ²)/20`` (a log-likelihood ratio, clipped at −5) and ``sqrt(Δχ²)/10`` (template S/N).

The templates are buffers saved with the weights (the model stays self-contained); :func:`init_templates` fills
them from rest-frame SPS spectra (an orthonormal PCA basis of those spectra on the rest-frame log grid).
Everything is deterministic and row-independent (FFTs and the small solves act per row).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..instrument import Instrument
from .zgrid import ZGrid

N_FEATURES = 4  # per z bin: (llr, snr) for the hp and the full set
_CLIP_SIG = 4.0  # pixels deviating more than this (σ) from the preprocessing continuum are not fitted
_TAPS = 4  # shifts read per z bin (bins span 1.7–3.3 shifts at dlnw = 5e-4)
_HP_WIDTH = 0.006  # running-mean width (ln λ) removed from the hp templates (≈ the preprocessing's 64-px blocks)


def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


class LogGrid:
    """Observed log-λ binning, template rest grid and the shift ↔ z-bin tables for one instrument and z grid."""

    def __init__(self, instrument: Instrument, zgrid: ZGrid, dlnw: float):
        wave = instrument.wave.astype(np.float64)
        self.dlnw = float(dlnw)
        self.l0 = float(np.log(wave[0]))
        lnw = np.log(wave)
        self.chan_bin = np.floor((lnw - self.l0) / dlnw).astype(np.int64)  # (W,) observed log bin of a channel
        self.n_obs = int(self.chan_bin[-1]) + 1
        self.z_top = zgrid.z_max + 2 * zgrid.dz
        self.z_bot = max(0.0, zgrid.z_min - 2 * zgrid.dz)
        self.n_shift = int(math.ceil((math.log1p(self.z_top) - math.log1p(self.z_bot)) / dlnw)) + 1
        self.n_rest = self.n_obs + self.n_shift
        self.n_fft = _next_pow2(self.n_rest)
        # rest-frame ln λ of template pixel k: r0 + (k + 0.5)·dlnw, r0 = l0 − ln(1 + z_top)
        self.r0 = self.l0 - math.log1p(self.z_top)
        # shifts in each z bin: s = (ln(1+z_top) − ln(1+z)) / dlnw, bin edges z_lo < z_hi → s_hi < s_lo
        lo = zgrid.z_min + zgrid.dz * np.arange(zgrid.n)
        s_a = (math.log1p(self.z_top) - np.log1p(lo + zgrid.dz)) / dlnw
        s_b = (math.log1p(self.z_top) - np.log1p(lo)) / dlnw
        first = np.ceil(s_a).astype(np.int64)
        last = np.maximum(np.floor(s_b).astype(np.int64), first)
        taps = first[:, None] + np.arange(_TAPS)[None, :]
        self.taps = np.clip(np.minimum(taps, last[:, None]), 0, self.n_shift - 1)  # (Z, TAPS) repeats the last

    @property
    def rest_wave(self) -> np.ndarray:
        """Rest-frame wavelength (Å) of the template pixels, shape (n_rest,)."""
        return np.exp(self.r0 + (np.arange(self.n_rest) + 0.5) * self.dlnw)


def template_bank(spectra: np.ndarray, wave: np.ndarray, grid: LogGrid, n_templates: int,
                  weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal PCA bases (``full`` and high-pass ``hp``) of rest-frame spectra on the template grid.

    Parameters
    ----------
    spectra : ndarray (N, L)
        Rest-frame SPS spectra (any flux units; each is normalised by its mean over the grid).
    wave : ndarray (L,)
        Their rest wavelengths (Å), increasing; must cover ``grid.rest_wave``.
    n_templates : int
        Basis size M (≤ N).
    weights : ndarray (N,), optional
        Weight of each (normalised) spectrum in the PCA (its row is scaled by ``sqrt(weight)`` before the SVD;
        e.g. 1/N_family so that every family counts alike). ``None``: all 1.

    Returns
    -------
    full, hp : ndarray (M, n_rest) float32, rows of unit rms.
    """
    rw = grid.rest_wave
    if wave[0] > rw[0] or wave[-1] < rw[-1]:
        raise ValueError(f"templates cover {wave[0]:.0f}-{wave[-1]:.0f} A, the scan needs {rw[0]:.0f}-{rw[-1]:.0f} A")
    edges = np.exp(grid.r0 + np.arange(grid.n_rest + 1) * grid.dlnw)
    # bin-average each spectrum (cumulative trapezoid integral, differenced at the bin edges)
    cum = np.concatenate([np.zeros((len(spectra), 1)),
                          np.cumsum(0.5 * (spectra[:, 1:] + spectra[:, :-1]) * np.diff(wave)[None, :], axis=1)], axis=1)
    ce = np.stack([np.interp(edges, wave, c) for c in cum])
    binned = np.diff(ce, axis=1) / np.diff(edges)[None, :]
    binned /= binned.mean(axis=1, keepdims=True)
    k = max(3, int(round(_HP_WIDTH / grid.dlnw)) | 1)
    ker = np.ones(k) / k
    pad = np.pad(binned, ((0, 0), (k // 2, k // 2)), mode="edge")
    smooth = np.stack([np.convolve(p, ker, mode="valid") for p in pad])
    sw = np.ones((len(spectra), 1)) if weights is None else np.sqrt(np.asarray(weights, np.float64))[:, None]
    out = []
    for s in (binned, binned - smooth):
        u, sv, vt = np.linalg.svd(s * sw, full_matrices=False)
        basis = vt[:n_templates] * np.sqrt(grid.n_rest)
        basis *= np.sign(basis.sum(axis=1, keepdims=True) + 1e-12)
        out.append(basis.astype(np.float32))
    return out[0], out[1]


def default_template_spectra() -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame spectra to build the bank from: the kcorrect basis shipped with the package (Å, flux)."""
    from importlib import resources

    f = resources.files("survey_infer") / "data" / "templates" / "kcorrect_linefree.npz"
    with f.open("rb") as fh, np.load(fh, allow_pickle=False) as d:
        return np.asarray(d["flux"], np.float64), np.asarray(d["wave"], np.float64)


def ssp_template_spectra(max_age_gyr: float | None = None, with_kcorrect: bool = True
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rest-frame spectra for an SSP-family bank: every age × metallicity of the four SSP families of the
    simulator (:data:`survey_infer.simulate.families.SSP_FAMILIES`: M11-MARCS, M11-STELIB, MaStar, BPASS) and,
    optionally, the five kcorrect templates, on the SSP families' common rest grid.

    Parameters
    ----------
    max_age_gyr : float, optional
        Leave out SSPs older than this (Gyr); ``None`` keeps every age.
    with_kcorrect : bool
        Add the kcorrect templates (linearly interpolated onto the grid) as a sixth group.

    Returns
    -------
    spectra : ndarray (N, L) float64
        Each unit mean over 3500–7500 Å (L = 27,835, 1150–18600 Å).
    wave : ndarray (L,) float64
        Rest wavelengths (Å).
    weights : ndarray (N,) float64
        1 / (spectra in its group): every family weighs the same in :func:`template_bank`'s PCA.
    """
    from ..simulate.families import SSP_FAMILIES, load_family

    groups = []
    wave = None
    for name in SSP_FAMILIES:
        d = load_family(name)
        w = np.exp(d["lnw0"] + d["dlnw"] * np.arange(d["L"]))
        if wave is None:
            wave = w
        elif len(w) != len(wave) or not np.allclose(w, wave):
            raise ValueError(f"SSP family {name} is not on the common rest grid")
        cube = d["cube"].astype(np.float64)
        if max_age_gyr is not None:
            ages = np.repeat(d["age_gyr"], d["n_z"])  # metallicity varies fastest
            cube = cube[ages <= max_age_gyr]
        groups.append(cube)
    if with_kcorrect:
        kf, kw = default_template_spectra()
        groups.append(np.stack([np.interp(wave, kw, f) for f in kf]))
    sel = (wave >= 3500.0) & (wave <= 7500.0)
    spectra = np.concatenate([g / g[:, sel].mean(axis=1, keepdims=True) for g in groups])
    weights = np.concatenate([np.full(len(g), 1.0 / len(g)) for g in groups])
    return spectra, wave, weights


class TemplateChi2(nn.Module):
    """FFT template χ² scan (see the module docstring): network input channels → (B, N_FEATURES, Z)."""

    def __init__(self, instrument: Instrument, zgrid: ZGrid, n_templates: int, dlnw: float):
        super().__init__()
        self.grid = LogGrid(instrument, zgrid, dlnw)
        g = self.grid
        self.M = int(n_templates)
        self.hp_kernel = max(3, int(round(_HP_WIDTH / dlnw)) | 1)
        self.register_buffer("t_full", torch.zeros(self.M, g.n_rest))
        self.register_buffer("t_hp", torch.zeros(self.M, g.n_rest))
        self.register_buffer("chan_bin", torch.from_numpy(g.chan_bin), persistent=False)
        self.register_buffer("taps", torch.from_numpy(g.taps.reshape(-1)), persistent=False)
        iu = torch.triu_indices(self.M, self.M)
        self.register_buffer("iu", iu, persistent=False)

    def fill(self, spectra: np.ndarray, wave: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Set the templates from rest-frame spectra (:func:`template_bank`)."""
        full, hp = template_bank(spectra, wave, self.grid, self.M, weights)
        with torch.no_grad():
            self.t_full.copy_(torch.from_numpy(full))
            self.t_hp.copy_(torch.from_numpy(hp))

    def _bin(self, v: torch.Tensor) -> torch.Tensor:
        """Sum (B, W) channel values into (B, n_obs) log bins (fixed order: deterministic)."""
        out = v.new_zeros(v.shape[0], self.grid.n_obs)
        return out.index_add_(1, self.chan_bin, v)

    def _dchi2(self, FW: torch.Tensor, d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, M = self.grid.n_fft, self.M
        S = self.grid.n_shift
        Fd = torch.fft.rfft(d, n=n)  # (B, F)
        Ft = torch.fft.rfft(t, n=n)  # (M, F)
        tt = t[self.iu[0]] * t[self.iu[1]]  # (P, n_rest)
        Ftt = torch.fft.rfft(tt, n=n)
        # c(s) = Σ_i x_i t(i + s) = irfft(conj(X)·T)[s]
        b = torch.fft.irfft(Fd.conj()[:, None, :] * Ft[None], n=n)[..., :S]  # (B, M, S)
        a = torch.fft.irfft(FW.conj()[:, None, :] * Ftt[None], n=n)[..., :S]  # (B, P, S)
        B = d.shape[0]
        A = a.new_zeros(B, S, M, M)
        at = a.transpose(1, 2)
        A[:, :, self.iu[0], self.iu[1]] = at
        A[:, :, self.iu[1], self.iu[0]] = at
        diag = torch.diagonal(A, dim1=2, dim2=3)
        ridge = 1e-4 * diag.mean(dim=2, keepdim=True).clamp_min(0) + 1e-6
        A = A + torch.diag_embed(ridge.expand(B, S, M))
        bt = b.transpose(1, 2)  # (B, S, M)
        sol = torch.linalg.solve(A, bt[..., None])[..., 0]
        return (sol * bt).sum(-1).clamp_min(0)  # (B, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network input ``x`` (B, C ≥ 5, W) (see :mod:`survey_infer.preprocess`) → features (B, 4, Z)."""
        good = x[:, 4]
        sig = x[:, 3].clamp_min(1e-3)
        w = good * (x[:, 0].abs() < _CLIP_SIG) / (sig * sig)  # emission lines and sky residuals left out
        Wb = self._bin(w)
        d_full = self._bin(w * (x[:, 1] + x[:, 2]))
        # high-pass on the log grid with the same running mean as the hp templates (shift-invariant, so the
        # data and the templates are filtered alike): weighted running mean = box(d) / box(W)
        k = self.hp_kernel
        box = torch.ones(1, 1, k, dtype=x.dtype, device=x.device)
        num = F.conv1d(d_full[:, None], box, padding=k // 2)[:, 0]
        den = F.conv1d(Wb[:, None], box, padding=k // 2)[:, 0]
        smooth = num / den.clamp_min(1e-12)
        d_hp = d_full - Wb * smooth
        n = self.grid.n_fft
        FW = torch.fft.rfft(Wb, n=n)
        feats = []
        for d, t in ((d_hp, self.t_hp), (d_full, self.t_full)):
            dc = self._dchi2(FW, d, t)  # (B, S)
            Z = self.taps.numel() // _TAPS
            per_bin = dc[:, self.taps].reshape(-1, Z, _TAPS).amax(dim=2)  # (B, Z)
            mx = per_bin.amax(dim=1, keepdim=True)
            feats.append(((per_bin - mx) / 20.0).clamp_min(-5.0))
            feats.append(torch.sqrt(per_bin + 1e-6) / 10.0)
        return torch.stack(feats, dim=1)

    def flops_per_spectrum(self, batch: int = 32) -> float:
        """Analytic FLOPs of the scan per spectrum (FFTs 2.5·n·log2 n real, complex products 6 per bin, the
        M×M solves M³/3 + 2M² per shift, the high-pass box sums; templates' FFTs shared by ``batch`` rows).
        ``torch.utils.flop_counter`` does not count FFTs or solves, so benchmarks add this."""
        n, M, S = self.grid.n_fft, self.M, self.grid.n_shift
        P = M * (M + 1) // 2
        fft = 2.5 * n * math.log2(n)
        per_row = 3 * fft + 2 * (M + P) * (fft + 6 * (n // 2 + 1)) + 2 * S * (M ** 3 / 3 + 2 * M ** 2 + 2 * M)
        per_row += 2 * 2 * self.grid.n_obs * self.hp_kernel + 6 * self.grid.n_obs
        return float(per_row + 2 * (M + P) * fft / batch)

    def best_z(self, x: torch.Tensor, zgrid: ZGrid, which: str = "full") -> np.ndarray:
        """Redshift of the largest Δχ² bin (the classical fit alone), shape (B,) — for ablations."""
        f = self.forward(x)
        k = 1 if which == "hp" else 3
        return zgrid.centres[f[:, k].argmax(dim=1).cpu().numpy()]
