"""Multi-task 1D residual CNN with a line-aware redshift head and an MC-dropout shared head.

Architecture (defaults in :class:`NetConfig`; ~0.1 GFLOP per spectrum on MOONS LR, measured in
``benchmarks``):

* **Trunk** (runs once per object): a strided stem (stride 4) then pre-activation residual units with growing
  dilation; features at 1/4 of the channel resolution (≈3 px, well below a dz = 0.003 bin at any z).
* **Line gather**: ``C_g`` trunk feature maps are read, for every redshift bin and every line of the line list,
  at the channel where that rest wavelength lands (linear interpolation between trunk positions, zero where it
  falls off the grid or in an arm gap). A 1×1 layer mixes the (line, feature) values per bin → ``a(H1, Z)``.
  This builds the physics in (lines move together with 1+z) and keeps the per-bin work tiny.
* **Auxiliary line-location head**: a per-position logit at trunk resolution (which positions hold redshifted
  emission lines); training only, outside the MC loop, not in the catalog.
* **Template χ² scan** (``xc_templates > 0``, :mod:`survey_infer.model.xcorr`): a classical template fit over
  the z grid by FFT on a log-λ grid (high-pass and full-continuum template sets), per bin
  (log-likelihood ratio, template S/N); these 4 values join the gathered line features in the 1×1 mix, and a
  direct 1×1 term adds them to the redshift logits (zero at initialisation). This gives the network what an
  absorption-line redshift needs: many weak features and the breaks, integrated as a template fit does.
* **Shared head with MC dropout** (runs T times, batched): channel dropout on ``a`` → 1×1 (H1→H2) → ReLU →
  dropout → 1×1 (H2→1) gives the redshift logits; a small MLP on pooled trunk features, per-object scalars, the
  expected z and the PDF-weighted line features gives an "outside the range / not a galaxy" logit and
  heteroscedastic (mean, log-variance) log M★ and log SFR.

Dropout masks are passed in (see :mod:`survey_infer.model.mc`): the network itself draws no random numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..instrument import Instrument
from .zgrid import ZGrid

# rest-frame vacuum wavelengths (Å) the redshift head looks at
GATHER_LINES: tuple[tuple[str, float], ...] = (
    ("Halpha", 6564.61), ("NII_6585", 6585.27), ("NII_6550", 6549.86), ("SII_6718", 6718.29),
    ("SII_6733", 6732.67), ("Hbeta", 4862.68), ("OIII_5008", 5008.24), ("OIII_4960", 4960.30),
    ("OII_3727", 3727.09), ("OII_3730", 3729.88), ("Hgamma", 4341.68), ("Hdelta", 4102.89),
    ("NeIII_3870", 3869.86), ("CaK", 3934.78), ("CaH", 3969.59), ("Gband", 4305.0), ("Mgb", 5176.7),
    ("NaD", 5895.6), ("D4000_blue", 3900.0), ("D4000_red", 4100.0),
)
EMISSION_FOR_AUX = (0, 1, 5, 6, 7, 8, 9)  # lines whose positions the auxiliary head learns


@dataclass
class NetConfig:
    """Architecture hyper-parameters (stored in the checkpoint JSON)."""

    n_in: int = 5
    n_scalars: int = 8
    width: int = 24
    stem_kernel: int = 9
    stride: int = 4
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1)
    n_gather: int = 6
    head_h1: int = 32
    head_h2: int = 8
    pool_width: int = 48
    feat_dim: int = 64
    mlp_hidden: int = 64
    p_drop: float = 0.2
    xc_templates: int = 0  # > 0: FFT template χ² scan (:mod:`.xcorr`) with this many templates per set
    xc_dlnw: float = 5e-4  # its log-λ step
    lines: tuple[tuple[str, float], ...] = field(default_factory=lambda: GATHER_LINES)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        d["lines"] = [list(x) for x in self.lines]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        d["dilations"] = tuple(d.get("dilations", cls.dilations))
        if "lines" in d:
            d["lines"] = tuple((str(a), float(b)) for a, b in d["lines"])
        return cls(**d)

    def mask_units(self) -> dict[str, int]:
        """Dropout units per MC sample, by mask family (stream)."""
        return {"h1": self.head_h1, "h2": self.head_h2, "mlp_in": self._mlp_in, "mlp_hidden": self.mlp_hidden}

    @property
    def _mlp_in(self) -> int:
        return self.feat_dim + self.n_scalars + 1 + self.head_h1


def gather_table(instrument: Instrument, zgrid: ZGrid, lines, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Trunk positions for every (line, z bin): left index (int64) and left weight (float32), shape (K, Z).

    Positions off the grid point to the padding column ``L'`` (value 0) with weight 1.
    """
    L = -(-instrument.n_wave // stride)
    K, Z = len(lines), zgrid.n
    idx = np.full((K, Z), L, np.int64)
    wl = np.ones((K, Z), np.float32)
    zc = zgrid.centres
    for k, (_, lw) in enumerate(lines):
        lam = lw * (1.0 + zc)
        for a, sl in zip(instrument.arms, instrument.arm_slices()):
            inside = (lam >= a.wave_min) & (lam <= a.wave_max)
            if not inside.any():
                continue
            pix = sl.start + (lam[inside] - a.wave_min) / a.dwave  # fractional channel
            # trunk position p covers channels [p*stride, (p+1)*stride); centre at p*stride + (stride-1)/2
            pos = (pix - (stride - 1) / 2.0) / stride
            p0 = np.floor(pos).astype(np.int64)
            t = pos - p0
            p0 = np.clip(p0, 0, L - 2)
            idx[k, inside] = p0
            wl[k, inside] = (1.0 - np.clip(t, 0, 1)).astype(np.float32)
    return idx, wl


class _Unit(nn.Module):
    """Pre-activation residual unit: x + conv(relu(bn(x)))."""

    def __init__(self, width: int, kernel: int, dilation: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(width)
        self.conv = nn.Conv1d(width, width, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.relu(self.bn(x)))


class SpectrumNet(nn.Module):
    """See the module docstring. ``forward`` is used in training; inference uses :meth:`trunk` + :meth:`head`."""

    def __init__(self, cfg: NetConfig, instrument: Instrument, zgrid: ZGrid):
        super().__init__()
        self.cfg = cfg
        self.zgrid = zgrid
        w = cfg.width
        self.stem = nn.Conv1d(cfg.n_in, w, cfg.stem_kernel, stride=cfg.stride, padding=cfg.stem_kernel // 2)
        self.units = nn.ModuleList([_Unit(w, cfg.kernel, d) for d in cfg.dilations])
        self.bn_out = nn.BatchNorm1d(w)
        self.to_gather = nn.Conv1d(w, cfg.n_gather, 1)
        self.aux = nn.Conv1d(w, 1, 1)
        self.pool_conv = nn.Conv1d(w, cfg.pool_width, 4, stride=4)
        self.feat = nn.Linear(2 * cfg.pool_width, cfg.feat_dim)
        K = len(cfg.lines)
        n_xc = 0
        if cfg.xc_templates > 0:
            from .xcorr import N_FEATURES, TemplateChi2

            self.xc = TemplateChi2(instrument, zgrid, cfg.xc_templates, cfg.xc_dlnw)
            self.xc_direct = nn.Conv1d(N_FEATURES, 1, 1, bias=False)
            nn.init.zeros_(self.xc_direct.weight)
            n_xc = N_FEATURES
        self.mix = nn.Conv1d(K * cfg.n_gather + n_xc, cfg.head_h1, 1)
        self.zbias = nn.Parameter(torch.zeros(zgrid.n))
        self.h2 = nn.Linear(cfg.head_h1, cfg.head_h2)
        self.h3 = nn.Linear(cfg.head_h2, 1)
        self.mlp1 = nn.Linear(cfg._mlp_in, cfg.mlp_hidden)
        self.mlp2 = nn.Linear(cfg.mlp_hidden, 5)  # outside logit, mstar (mu, logvar), sfr (mu, logvar)
        idx, wl = gather_table(instrument, zgrid, cfg.lines, cfg.stride)
        self.register_buffer("g_idx", torch.from_numpy(idx), persistent=False)
        self.register_buffer("g_w", torch.from_numpy(wl), persistent=False)
        self.register_buffer("zc", torch.from_numpy(zgrid.centres.astype(np.float32)), persistent=False)
        self.n_pos = -(-instrument.n_wave // cfg.stride)

    # ---- trunk -------------------------------------------------------------------------------------------
    def trunk(self, x: torch.Tensor, scalars: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run once per object. Returns ``a`` (B, H1, Z), ``ctx`` (B, feat+scalars), ``aux`` (B, L') and, with
        the template scan, ``zadd`` (B, Z): a per-bin term added to the redshift logits."""
        h = self.stem(x)
        for u in self.units:
            h = u(h)
        h = F.relu(self.bn_out(h))
        g = self.to_gather(h)  # (B, Cg, L')
        B, Cg, L = g.shape
        g = torch.cat([g, g.new_zeros(B, Cg, 2)], dim=2)  # padding columns L', L'+1
        K, Z = self.g_idx.shape
        idx0 = self.g_idx.reshape(1, 1, K * Z).expand(B, Cg, K * Z)
        v0 = torch.gather(g, 2, idx0)
        v1 = torch.gather(g, 2, idx0 + 1)
        wl = self.g_w.reshape(1, 1, K * Z)
        v = (v0 * wl + v1 * (1.0 - wl)).reshape(B, Cg, K, Z).transpose(1, 2).reshape(B, K * Cg, Z)
        res = {}
        if self.cfg.xc_templates > 0:
            xf = self.xc(x)  # (B, 4, Z)
            v = torch.cat([v, xf], dim=1)
            res["zadd"] = self.xc_direct(xf)[:, 0]
        a = self.mix(v)  # (B, H1, Z)
        p = F.relu(self.pool_conv(h))
        pooled = torch.cat([p.mean(dim=2), p.amax(dim=2)], dim=1)
        feat = F.relu(self.feat(pooled))
        ctx = torch.cat([feat, scalars], dim=1)
        return {"a": a, "ctx": ctx, "aux": self.aux(h)[:, 0, :], **res}

    # ---- head (MC) -----------------------------------------------------------------------------------------
    def head(self, a: torch.Tensor, ctx: torch.Tensor, masks: dict[str, torch.Tensor],
             zadd: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """T head passes for B objects at once.

        Parameters
        ----------
        a : (B, H1, Z), ctx : (B, C)
            Trunk outputs.
        masks : dict of (B, T, units) tensors
            Inverted-dropout multipliers per family (``h1``, ``h2``, ``mlp_in``, ``mlp_hidden``); all ones for
            a deterministic pass (T = 1).
        zadd : (B, Z), optional
            Per-bin term added to every pass's redshift logits (the trunk's ``zadd``).

        Returns
        -------
        dict with ``logits_z`` (B, T, Z), ``logit_out`` (B, T), ``mstar``/``sfr`` (B, T, 2) as (mean, log var).
        """
        m1, m2 = masks["h1"], masks["h2"]
        B, T, H1 = m1.shape
        ra = F.relu(a)  # (B, H1, Z)
        w2 = self.h2.weight  # (H2, H1)
        H2 = w2.shape[0]
        # per-sample masked weights with the bias as an extra input column (one bmm, no broadcast copies)
        wt = torch.cat([w2[None, None] * m1[:, :, None, :],
                        self.h2.bias[None, None, :, None].expand(B, T, H2, 1)], dim=3).reshape(B, T * H2, H1 + 1)
        ra1 = torch.cat([ra, ra.new_ones(B, 1, ra.shape[2])], dim=1)
        z2 = F.relu_(torch.bmm(wt, ra1)).reshape(B, T, H2, -1)  # (B, T, H2, Z)
        # second mask and the last 1x1 layer folded into one weighted sum over H2
        w3 = m2 * self.h3.weight[0]  # (B, T, H2)
        logits_z = torch.matmul(w3[:, :, None, :], z2).squeeze(2) + (self.h3.bias[0] + self.zbias)
        if zadd is not None:
            logits_z = logits_z + zadd[:, None, :]
        pz = torch.softmax(logits_z, dim=-1)  # (B, T, Z)
        zexp = (pz * self.zc).sum(-1, keepdim=True)
        q = torch.bmm(pz, ra.transpose(1, 2))  # PDF-weighted line features (B, T, H1)
        inp = torch.cat([ctx[:, None, :].expand(B, T, ctx.shape[1]), zexp, q], dim=-1) * masks["mlp_in"]
        hid = F.relu(self.mlp1(inp)) * masks["mlp_hidden"]
        out = self.mlp2(hid)
        return {
            "logits_z": logits_z,
            "logit_out": out[..., 0],
            "mstar": out[..., 1:3],
            "sfr": out[..., 3:5],
        }

    def forward(self, x, scalars, masks):
        tr = self.trunk(x, scalars)
        hd = self.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
        hd["aux"] = tr["aux"]
        return hd


def ones_masks(cfg: NetConfig, B: int, T: int = 1, device=None) -> dict[str, torch.Tensor]:
    """All-ones masks: the deterministic (no-dropout) pass."""
    return {k: torch.ones(B, T, n, device=device) for k, n in cfg.mask_units().items()}
