"""What store training and on-the-fly training share: targets, the multi-task loss, one optimisation step,
counter-based dropout masks, the resumable state (``train_state/``: safetensors + JSON, written atomically) and
the deterministic validation pass."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..atomic import atomic_path, atomic_write_text
from ..model import mc
from ..model.network import EMISSION_FOR_AUX, NetConfig, SpectrumNet
from ..model.zgrid import ZGrid
from ..preprocess import n_scalars, preprocess

log = logging.getLogger(__name__)
STATE_DIR = "train_state"


def _read_rows(ds, lo: int, hi: int) -> dict[str, np.ndarray]:
    cols = {"flux": ds["flux"][lo:hi].values, "ivar": ds["ivar"][lo:hi].values,
            "object_id": ds["object_id"][lo:hi].values}
    for c in ("z_true", "logmstar_true", "logsfr_true", "kind", "is_passive"):
        cols[c] = ds[c][lo:hi].values
    if "mask" in ds:
        cols["mask"] = ds["mask"][lo:hi].values
    return cols


def _targets(cols: dict, zg: ZGrid, net: SpectrumNet, wave: np.ndarray, tnorm: dict, smooth_bins: float = 0.75):
    n = len(cols["z_true"])
    Z = zg.n
    kind = cols["kind"].astype(np.int64)
    inrange = kind == 0
    ib = np.clip(zg.index(cols["z_true"]), 0, Z - 1)
    # Gaussian-smoothed one-hot over Z+1 classes
    tgt = np.zeros((n, Z + 1), np.float32)
    j = np.arange(Z)
    g = np.exp(-0.5 * ((j[None, :] - ib[:, None]) / smooth_bins) ** 2)
    g /= g.sum(axis=1, keepdims=True)
    tgt[inrange, :Z] = g[inrange]
    tgt[~inrange, Z] = 1.0
    ym = (cols["logmstar_true"] - tnorm["logmstar"][0]) / tnorm["logmstar"][1]
    ys = (cols["logsfr_true"] - tnorm["logsfr"][0]) / tnorm["logsfr"][1]
    # auxiliary line-location map at trunk resolution
    L = net.n_pos
    aux = np.zeros((n, L), np.float32)
    stride = net.cfg.stride
    for r in np.flatnonzero((kind != 1) & ~cols["is_passive"].astype(bool)):
        for k in EMISSION_FOR_AUX:
            lam = net.cfg.lines[k][1] * (1.0 + float(cols["z_true"][r]))
            if lam < wave[0] or lam > wave[-1]:
                continue
            pix = int(np.searchsorted(wave, lam))
            if pix <= 0 or pix >= len(wave) or abs(wave[pix] - lam) > 2 * (wave[pix] - wave[pix - 1]):
                continue  # in an arm gap
            p = pix // stride
            aux[r, max(0, p - 1): p + 2] = 1.0
    return (torch.from_numpy(tgt), torch.from_numpy(ym.astype(np.float32)), torch.from_numpy(ys.astype(np.float32)),
            torch.from_numpy(inrange), torch.from_numpy(aux))


def _loss(out, tgt, ym, ys, inr, aux_t):
    logits = torch.cat([out["logits_z"][:, 0], out["logit_out"][:, 0, None]], dim=1)
    ce = -(tgt * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    nll = logits.new_zeros(())
    if inr.any():
        for pred, y in ((out["mstar"][:, 0], ym), (out["sfr"][:, 0], ys)):
            mu, lv = pred[inr, 0], pred[inr, 1].clamp(-7, 5)
            nll = nll + 0.5 * (lv + (y[inr] - mu) ** 2 * torch.exp(-lv)).mean()
    aux = F.binary_cross_entropy_with_logits(out["aux"], aux_t, pos_weight=torch.tensor(20.0))
    return ce + 0.5 * nll + 0.2 * aux, {"ce": ce.item(), "nll": nll.item(), "aux": aux.item()}


def _order(n_chunks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n_chunks)


def _save_state(out: Path, net, opt, state: dict) -> None:
    """Write the resumable state to ``out/train_state``: tensors (net + optimizer) as safetensors, the rest as
    JSON; each file replaced atomically (:func:`survey_infer.atomic.atomic_path`)."""
    from safetensors.torch import save_file

    sd = out / STATE_DIR
    sd.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    with atomic_path(sd / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = dict(state)
    meta["param_groups"] = osd["param_groups"]
    atomic_write_text(sd / "state.json", json.dumps(meta, indent=1))


def _load_state(out: Path, net, opt) -> dict:
    from safetensors.torch import load_file

    sd = out / STATE_DIR
    meta = json.loads((sd / "state.json").read_text())
    tensors = load_file(str(sd / "state.safetensors"))
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def _new_net(inst, zg: ZGrid, arch: dict | None, seed: int) -> tuple[NetConfig, SpectrumNet]:
    """The network of a new run: :class:`NetConfig` defaults with ``arch`` overrides, initialised from ``seed``."""
    cfg = NetConfig(**{**{"n_scalars": n_scalars(inst)}, **(arch or {})})
    torch.manual_seed(seed)
    return cfg, SpectrumNet(cfg, inst, zg)


def _dropout_masks(cfg: NetConfig, key: int, object_ids: np.ndarray, dev: torch.device) -> dict:
    """One MC-dropout pass's keep masks for these objects (counter-based: a function of key and object id)."""
    return {k: torch.from_numpy(mc.keep_masks(key, object_ids, 1, u, cfg.p_drop, stream=10 + i)).to(dev)
            for i, (k, u) in enumerate(cfg.mask_units().items())}


def _opt_step(net: SpectrumNet, opt, lr_now: float, x, sc, targets: tuple, masks: dict, dev: torch.device):
    """One optimisation step on a batch: forward, multi-task loss (:func:`_loss`), backward, clip at 5, step.

    ``targets`` is ``(tgt, ym, ys, inrange, aux_t)`` of the batch as made by :func:`_targets`; returns the loss
    tensor and its parts (floats).
    """
    for g in opt.param_groups:
        g["lr"] = lr_now
    outp = net(x.to(dev), sc.to(dev), masks)
    loss, parts = _loss(outp, *(t.to(dev) for t in targets))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    return loss, parts


@torch.no_grad()
def quick_validate(net, vds, inst, sky, zg, n: int, dev) -> float:
    """|Δz| < 0.01 fraction of a deterministic pass on the first ``n`` in-range validation objects."""
    net.eval()
    from ..model.network import ones_masks

    kind = vds["kind"].values[:n]
    cols = {"flux": vds["flux"][:n].values, "ivar": vds["ivar"][:n].values}
    pp = preprocess(cols["flux"], cols["ivar"], inst, sky)
    zs = []
    for b0 in range(0, n, 64):
        x = torch.from_numpy(pp.x[b0:b0 + 64]).to(dev)
        s = torch.from_numpy(pp.scalars[b0:b0 + 64]).to(dev)
        out = net(x, s, ones_masks(net.cfg, len(x), 1, dev))
        zs.append(zg.centres[out["logits_z"][:, 0].argmax(dim=1).cpu().numpy()])
    z = np.concatenate(zs)
    zt = vds["z_true"].values[:n]
    ok = kind == 0
    net.train()
    return float((np.abs(z[ok] - zt[ok]) < 0.01).mean())
