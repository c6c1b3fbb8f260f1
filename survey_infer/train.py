"""Training: ``survey-infer train --train STORE --val STORE --out MODEL_DIR [--resume]``.

Multi-task loss = cross-entropy over the redshift bins + "outside" class (Gaussian-smoothed labels)
+ heteroscedastic Gaussian NLL for log M★ and log SFR (galaxies in range) + BCE for the auxiliary
line-location map. Everything that drives the optimisation is a function of (seed, epoch, step): data order,
dropout masks (counter-based, :mod:`survey_infer.model.mc`), so a run checkpointed at any step resumes exactly.
A checkpoint (``MODEL_DIR/train_state/``: safetensors weights + optimizer tensors, JSON for the rest; nothing
pickled) is written every epoch and every ``--checkpoint-minutes``; ``--max-minutes`` ends a leg cleanly.
After the last epoch the PDFs are calibrated (temperature) and the screening thresholds set on the validation
set; both are stored in ``model.json``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .atomic import atomic_path, atomic_write_text
from .model import mc
from .model.checkpoint import save_model
from .model.network import EMISSION_FOR_AUX, NetConfig, SpectrumNet
from .model.zgrid import ZGrid
from .preprocess import PREPROCESSING_VERSION, n_scalars, preprocess

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


def _training_inputs(ds) -> tuple:
    """Instrument and sky mask of the training survey (as recorded in its attrs); it must have the truth columns.

    Returns ``(inst, sky)``; raises :class:`~survey_infer.errors.UserError` naming a missing column.
    """
    from .instrument import load_instrument

    train_store = ds.encoding.get("source", "(dataset)")
    inst = load_instrument(ds.attrs.get("instrument_config") or ds.attrs.get("instrument"))
    for need in ("z_true", "logmstar_true", "logsfr_true", "kind"):
        if need not in ds:
            from .errors import UserError

            raise UserError(f"training store {train_store} has no truth column {need!r} (simulate it with survey-infer simulate)")
    sky = ds["sky_mask"].values.astype(np.uint8) if "sky_mask" in ds else np.zeros(inst.n_wave, np.uint8)
    return inst, sky


def _restore(out: Path, net, opt, state: dict, resume: bool, finalize: bool, epochs: int) -> int:
    """Load the saved state into ``net``/``opt``/``state`` if resuming; with ``finalize`` end at the last
    checkpoint. Returns the number of epochs to run to (raises ``UserError`` if finalizing without a state)."""
    if (resume or finalize) and (out / STATE_DIR / "state.json").exists():
        saved = _load_state(out, net, opt)
        for k in ("epoch", "group_pos", "step", "seconds", "history", "target_norm"):
            state[k] = saved[k]
        log.info("resuming at epoch %d, group %d (step %d, %.0f s spent)", state["epoch"], state["group_pos"],
                 state["step"], state["seconds"])
    if finalize:
        if not (out / STATE_DIR / "state.json").exists():
            from .errors import UserError

            raise UserError(f"--finalize: no training state in {out / STATE_DIR}")
        log.info("finalizing from the last checkpoint (epoch %d, step %d) without further training",
                 state["epoch"], state["step"])
        state["epochs"] = epochs = state["epoch"] + (1 if state["group_pos"] else 0)
        state["epoch"] = epochs
    return epochs


def _train_group(run: dict, state: dict, gi: int, lo: int, hi: int):
    """Train on rows ``lo:hi`` of the training store (group ``gi`` of this epoch), shuffled by (seed, epoch,
    gi), in batches of ``run["batch_size"]``; advances ``state["step"]``; returns the last batch's loss and parts.
    ``run`` holds what stays fixed during the run (net, opt, cfg, ds, inst, sky, zg, tnorm, seed, sched, dev)."""
    ep, seed, batch_size = state["epoch"], run["seed"], run["batch_size"]
    cols = _read_rows(run["ds"], lo, hi)
    perm = np.random.default_rng([seed, ep, gi]).permutation(hi - lo)
    cols = {k: v[perm] for k, v in cols.items()}
    pp = preprocess(cols["flux"], cols["ivar"], run["inst"], run["sky"], cols.get("mask"))
    targets = _targets(cols, run["zg"], run["net"], run["inst"].wave, run["tnorm"])
    x = torch.from_numpy(pp.x)
    sc = torch.from_numpy(pp.scalars)
    for b0 in range(0, hi - lo, batch_size):
        sl = slice(b0, min(hi - lo, b0 + batch_size))
        masks = _dropout_masks(run["cfg"], seed * 1000 + ep, cols["object_id"][sl], run["dev"])
        loss, parts = _opt_step(run["net"], run["opt"], run["sched"](state["step"]), x[sl], sc[sl],
                                tuple(t[sl] for t in targets), masks, run["dev"])
        state["step"] += 1
    return loss, parts


def _finish_training(out: Path, run: dict, state: dict, val, n_val: int) -> dict:
    """Save the trained model (temperature 1) with its training record, then calibrate it on ``val``."""
    training = {k: state[k] for k in ("seed", "epochs", "batch_size", "lr", "step", "seconds", "history", "device",
                                       "train_store", "val_store", "n_train", "threads")}
    from .provenance import provenance

    training["provenance"] = provenance()
    run["net"].eval()
    calib = {"temperature": 1.0, "target_norm": run["tnorm"], "thresholds": {}}
    save_model(out, run["net"], run["inst"], run["sky"], PREPROCESSING_VERSION, calib, training)
    from .calibrate import calibrate_model

    report = calibrate_model(out, val, n=n_val)
    log.info("calibration: %s", json.dumps(report))
    return {"finished": True, "model_dir": str(out), "calibration": report, **training}


def train_model(train, val, out_dir: str | Path, *, epochs: int = 6,
                batch_size: int = 64, lr: float = 2e-3, seed: int = 0, resume: bool = False,
                threads: int | None = None, device: str = "cpu", arch: dict | None = None,
                max_minutes: float | None = None, checkpoint_minutes: float = 10.0, n_val: int = 5000,
                progress: bool = True, finalize: bool = False, group_rows: int = 1024,
                max_groups: int | None = None) -> dict:
    """Train (or resume) a model on a simulated survey store, then calibrate it; see the module docstring.

    Rows are read in groups of ``group_rows`` (whole store chunks), groups visited in an order drawn from
    (seed, epoch) and rows shuffled within a group; cosine learning-rate schedule over all epochs with a
    200-step warm-up. After each epoch a deterministic pass on the validation store is logged and the state saved.

    Parameters
    ----------
    train, val : xarray.Dataset
        Training and validation surveys, opened (:func:`survey_infer.io.survey_store.open_survey`: the science
        layer takes data, not files), with truth columns (``z_true``, ``logmstar_true``, ``logsfr_true``,
        ``kind``); the training record keeps the stores' paths (``encoding["source"]``).
    out_dir : path
        Model directory to write; the resumable state goes to ``out_dir/train_state``.
    resume, finalize : bool
        Continue from the saved state; ``finalize`` saves and calibrates the last checkpoint without training.
    max_minutes, max_groups : optional
        End this leg early (``{"finished": False, ...}`` is returned; resume with ``resume=True``).

    Returns
    -------
    dict
        ``finished``, and when finished ``model_dir``, ``calibration`` (:func:`calibrate_model`'s report) and the
        training record (step, seconds, history, ...).

    Raises
    ------
    UserError
        The training store lacks a truth column, or ``finalize`` without a saved state.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    ds, vds = train, val
    inst, sky = _training_inputs(ds)
    zg = ZGrid()
    cfg, net = _new_net(inst, zg, arch, seed)
    net = net.to(dev)
    inr = ds["kind"].values == 0
    tnorm = {k: [float(np.nanmean(ds[f"{k}_true"].values[inr])), float(np.nanstd(ds[f"{k}_true"].values[inr]))]
             for k in ("logmstar", "logsfr")}
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    N = ds.sizes["object"]
    chunk = int(ds["flux"].encoding.get("chunks", (256,))[0]) if ds["flux"].encoding.get("chunks") else 256
    group = max(chunk, group_rows // chunk * chunk)  # rows read and shuffled together
    n_groups = -(-N // group)
    total_steps = epochs * sum(-(-min(group, N - g * group) // batch_size) for g in range(n_groups))
    state = {"epoch": 0, "group_pos": 0, "step": 0, "seconds": 0.0, "seed": seed, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "target_norm": tnorm, "history": [], "device": str(dev),
             "train_store": str(ds.encoding.get("source", "")), "val_store": str(vds.encoding.get("source", "")),
             "n_train": int(N),
             "architecture": cfg.to_dict(), "threads": torch.get_num_threads()}
    epochs = _restore(out, net, opt, state, resume, finalize, epochs)
    run = {"net": net, "opt": opt, "cfg": cfg, "ds": ds, "inst": inst, "sky": sky, "zg": zg, "dev": dev,
           "tnorm": state["target_norm"], "seed": seed, "batch_size": batch_size,
           "sched": lambda s: lr * 0.5 * (1 + np.cos(np.pi * min(s, total_steps) / total_steps)) * min(1.0, (s + 1) / 200)}
    t_leg = t_ckpt = time.time()
    groups_this_leg = 0
    while state["epoch"] < epochs:
        ep = state["epoch"]
        order = _order(n_groups, seed, ep)
        net.train()
        bar = tqdm(total=n_groups, initial=state["group_pos"], desc=f"epoch {ep + 1}/{epochs}", disable=not progress,
                   unit="grp")
        while state["group_pos"] < n_groups:
            t0 = time.time()
            gi = int(order[state["group_pos"]])
            loss, parts = _train_group(run, state, gi, gi * group, min(N, (gi + 1) * group))
            state["group_pos"] += 1
            state["seconds"] += time.time() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", ce=f"{parts['ce']:.3f}", lr=f"{run['sched'](state['step']):.1e}")
            if time.time() - t_ckpt > checkpoint_minutes * 60:
                _save_state(out, net, opt, state)
                t_ckpt = time.time()
            groups_this_leg += 1
            if (max_minutes is not None and time.time() - t_leg > max_minutes * 60) or \
                    (max_groups is not None and groups_this_leg >= max_groups):
                bar.close()
                _save_state(out, net, opt, state)
                log.info("leg ended after %.1f min; resume with --resume", (time.time() - t_leg) / 60)
                return {"finished": False, **{k: state[k] for k in ("epoch", "step", "seconds")}}
        bar.close()
        state["epoch"] += 1
        state["group_pos"] = 0
        acc = quick_validate(net, vds, inst, sky, zg, n=min(n_val, 1500), dev=dev)
        state["history"].append({"epoch": ep + 1, "val_acc_deterministic": acc, "seconds": state["seconds"]})
        log.info("epoch %d done: val |dz|<0.01 (deterministic pass, 1500 obj) = %.3f; %.0f s", ep + 1, acc,
                 state["seconds"])
        _save_state(out, net, opt, state)
        t_ckpt = time.time()
    if not finalize:
        _save_state(out, net, opt, state)
    return _finish_training(out, run, state, vds, n_val)


def warm_start(net: SpectrumNet, model_dir: str | Path) -> dict:
    """Copy a trained model's weights into ``net`` (same trunk and head sizes); returns its calibration.

    Tensors of equal shape are copied; the 1×1 mix layer, which gains input columns for the template scan,
    gets the old weights in its first columns and zeros in the new ones, so the warm-started network computes
    exactly what the old one did until training moves it. Raises ``ValueError`` if another tensor differs.
    """
    from .model.checkpoint import load_model

    old = load_model(model_dir)
    src = old.net.state_dict()
    dst = net.state_dict()
    with torch.no_grad():
        for k, v in src.items():
            if k not in dst:
                continue
            if dst[k].shape == v.shape:
                dst[k].copy_(v)
            elif k == "mix.weight" and dst[k].shape[0] == v.shape[0] and dst[k].shape[2:] == v.shape[2:]:
                dst[k].zero_()
                dst[k][:, :v.shape[1]] = v
            else:
                raise ValueError(f"warm start from {model_dir}: {k} has shape {tuple(v.shape)}, "
                                 f"the new network {tuple(dst[k].shape)}")
    return dict(old.calibration)


TRUNK_MODULES = ("stem", "units", "bn_out", "to_gather", "aux", "pool_conv", "feat")


def _set_train(net: SpectrumNet, freeze_trunk: bool) -> None:
    """Training mode; with ``freeze_trunk`` the trunk keeps eval mode (BatchNorm running statistics fixed)."""
    net.train()
    if freeze_trunk:
        for name in TRUNK_MODULES:
            getattr(net, name).eval()


def _sim_batch(step: int, batch_size: int, seed: int, sim_config: dict | None) -> dict[str, np.ndarray]:
    """The training spectra of one step: rows ``step·B … (step+1)·B`` of the simulated survey ``seed``."""
    from .simulate.simulator import SimConfig, simulate_block

    cfg = SimConfig.from_dict(sim_config) if sim_config else SimConfig()
    return simulate_block(step * batch_size, batch_size, seed, cfg)


def train_online(out_dir: str | Path, *, steps: int, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,
                 sim_seed: int = 1_000_000, sim_config: dict | None = None, resume: bool = False,
                 init_from: str | Path | None = None, arch: dict | None = None, threads: int | None = None,
                 device: str = "cpu", max_minutes: float | None = None, checkpoint_minutes: float = 10.0,
                 val_n: int = 1024, val_seed: int = 424242, val_every: int = 200, progress: bool = False,
                 max_steps: int | None = None, freeze_trunk: bool = False) -> dict:
    """Train on spectra simulated on the fly: fresh, never repeated, deterministic from (sim_seed, step).

    Step ``s`` trains on rows ``s·B … (s+1)·B`` of the survey ``simulate_block(·, ·, sim_seed, sim_config)``
    (a prefetch thread simulates step ``s+1`` while step ``s`` trains), with dropout masks keyed by those rows'
    object ids: everything is a function of (seed, sim_seed, step), so a leg ended by ``max_minutes`` and
    resumed from ``OUT/train_state`` continues exactly. Every ``val_every`` steps a deterministic pass on a
    fixed validation sample (``val_n`` spectra of the survey ``val_seed``) records |Δz| < 0.01 for all, passive
    and star-forming galaxies in ``state["history"]`` (the learning curve), with samples seen and seconds.

    Parameters
    ----------
    out_dir : path
        Training directory; the resumable state goes to ``out_dir/train_state`` (safetensors + JSON).
    steps : int
        Total optimisation steps of the run (the cosine learning-rate schedule spans them).
    init_from : path or "default", optional
        Warm start from a trained model (:func:`warm_start`); its target normalisation is kept.
    arch : dict, optional
        :class:`NetConfig` overrides (e.g. ``{"xc_templates": 5}``).
    max_minutes, max_steps : optional
        End this leg after so many minutes / optimisation steps (resume with ``resume=True``).
    freeze_trunk : bool
        Train only the redshift/property heads (and the template-scan weights), with the CNN trunk fixed
        (eval-mode BatchNorm, no gradients): about 3× cheaper per step; used to fine-tune a warm-started model.

    Returns
    -------
    dict with ``finished``, ``step``, ``seconds``, ``samples_per_s`` (this leg) and the last validation entry.
    """
    from concurrent.futures import ThreadPoolExecutor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    has_state = resume and (out / STATE_DIR / "state.json").exists()
    run = _online_setup(out, arch=arch, seed=seed, init_from=init_from, has_state=has_state,
                        freeze_trunk=freeze_trunk, lr=lr, dev=dev)
    state = {"mode": "online", "freeze_trunk": run["freeze_trunk"], "step": 0, "seconds": 0.0, "seed": seed,
             "sim_seed": sim_seed, "sim_config": sim_config or {}, "steps": steps, "batch_size": batch_size,
             "lr": lr, "target_norm": run["tnorm"], "history": [], "device": str(dev),
             "architecture": run["cfg"].to_dict(), "init_from": str(init_from) if init_from else None,
             "val_n": val_n, "val_seed": val_seed, "threads": torch.get_num_threads(),
             "preprocessing_version": PREPROCESSING_VERSION}
    if has_state:
        saved = _load_state(out, run["net"], run["opt"])
        for k in ("step", "seconds", "history", "target_norm", "steps", "sim_seed", "sim_config", "seed",
                  "batch_size", "lr", "init_from"):
            state[k] = saved.get(k, state[k])
        steps, batch_size, lr, seed = state["steps"], state["batch_size"], state["lr"], state["seed"]
        sim_seed, sim_config, run["tnorm"] = state["sim_seed"], state["sim_config"], state["target_norm"]
        log.info("resuming at step %d (%.0f s spent)", state["step"], state["seconds"])
    validate = _online_validator(run, sim_config, val_n, val_seed, batch_size)
    sched = lambda s: lr * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)) * min(1.0, (s + 1) / 100)  # noqa: E731
    if not state["history"]:
        state["history"].append(validate(state))
        log.info("validation at step 0: %s", state["history"][-1])
    t_leg = t_ckpt = time.time()
    step0 = state["step"]
    pool = ThreadPoolExecutor(max_workers=1)
    fut = pool.submit(_sim_batch, state["step"], batch_size, sim_seed, sim_config)
    stopped = False
    _set_train(run["net"], run["freeze_trunk"])
    try:
        while state["step"] < steps:
            t0 = time.time()
            cols = fut.result()
            if state["step"] + 1 < steps:
                fut = pool.submit(_sim_batch, state["step"] + 1, batch_size, sim_seed, sim_config)
            pp = preprocess(cols["flux"], cols["ivar"], run["inst"], run["sky"])
            targets = _targets(cols, run["zg"], run["net"], run["inst"].wave, run["tnorm"])
            masks = _dropout_masks(run["cfg"], seed, cols["object_id"], dev)
            loss, parts = _opt_step(run["net"], run["opt"], sched(state["step"]), torch.from_numpy(pp.x),
                                    torch.from_numpy(pp.scalars), targets, masks, dev)
            state["step"] += 1
            state["seconds"] += time.time() - t0
            if state["step"] % val_every == 0 or state["step"] == steps:
                state["history"].append({**validate(state), "loss": round(loss.item(), 4), "ce": round(parts["ce"], 4)})
                log.info("step %d: %s", state["step"], state["history"][-1])
                if progress:
                    print(json.dumps(state["history"][-1]), file=sys.stderr, flush=True)
            if time.time() - t_ckpt > checkpoint_minutes * 60:
                _save_state(out, run["net"], run["opt"], state)
                t_ckpt = time.time()
            if (max_minutes is not None and time.time() - t_leg > max_minutes * 60) or \
                    (max_steps is not None and state["step"] - step0 >= max_steps):
                stopped = state["step"] < steps
                break
    finally:
        pool.shutdown(wait=True)
    _save_state(out, run["net"], run["opt"], state)
    leg_s = time.time() - t_leg
    res = {"finished": state["step"] >= steps, "step": state["step"], "seconds": state["seconds"],
           "samples_per_s": (state["step"] - step0) * batch_size / max(leg_s, 1e-9),
           "last_validation": state["history"][-1], "stopped_early": stopped}
    return res


def _online_setup(out: Path, *, arch: dict | None, seed: int, init_from, has_state: bool, freeze_trunk: bool,
                  lr: float, dev: torch.device) -> dict:
    """Instrument, sky mask, grid, network (template bank filled, warm-started unless a saved state follows),
    trunk frozen if asked (the saved run decides when resuming) and optimizer of an on-the-fly run.

    Returns a dict with ``inst, sky, zg, cfg, net, opt, tnorm, freeze_trunk, dev``.
    """
    from .instrument import load_instrument
    from .skymask import instrument_sky_mask

    inst = load_instrument()
    sky = instrument_sky_mask(inst)
    zg = ZGrid()
    cfg, net = _new_net(inst, zg, arch, seed)
    tnorm = {"logmstar": [10.0, 0.9], "logsfr": [1.0, 0.8]}
    if cfg.xc_templates > 0:
        from .model.xcorr import default_template_spectra

        net.xc.fill(*default_template_spectra())
    if init_from is not None and not has_state:
        tnorm = warm_start(net, init_from).get("target_norm", tnorm)
    net.to(dev)
    if has_state:  # the saved run decides (its optimizer's groups)
        freeze_trunk = bool(json.loads((out / STATE_DIR / "state.json").read_text()).get("freeze_trunk", False))
    if freeze_trunk:
        for name in TRUNK_MODULES:
            getattr(net, name).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    return {"inst": inst, "sky": sky, "zg": zg, "cfg": cfg, "net": net, "opt": opt, "tnorm": tnorm,
            "freeze_trunk": freeze_trunk, "dev": dev}


def _online_validator(run: dict, sim_config: dict | None, val_n: int, val_seed: int, batch_size: int):
    """The learning-curve validation of an on-the-fly run: a fixed sample (``val_n`` spectra of the survey
    ``val_seed``, simulated once per leg) and a function ``validate(state) -> dict`` (deterministic pass;
    |Δz| < 0.01 for all, passive and star-forming galaxies at ``state["step"]``)."""
    from .model.network import ones_masks
    from .simulate.simulator import SimConfig, simulate_block

    net, cfg, zg, dev = run["net"], run["cfg"], run["zg"], run["dev"]
    vcfg = SimConfig.from_dict(sim_config) if sim_config else SimConfig()
    vs = simulate_block(0, val_n, val_seed, vcfg)
    vpp = preprocess(vs["flux"], vs["ivar"], run["inst"], run["sky"])

    def validate(state: dict) -> dict:
        net.eval()
        zs = []
        with torch.no_grad():
            for b0 in range(0, val_n, 64):
                xb = torch.from_numpy(vpp.x[b0:b0 + 64]).to(dev)
                sb = torch.from_numpy(vpp.scalars[b0:b0 + 64]).to(dev)
                o = net(xb, sb, ones_masks(cfg, len(xb), 1, dev))
                zs.append(zg.centres[o["logits_z"][:, 0].argmax(dim=1).cpu().numpy()])
        _set_train(net, run["freeze_trunk"])
        ok = np.abs(np.concatenate(zs) - vs["z_true"]) < 0.01
        g = vs["kind"] == 0
        p = vs["is_passive"].astype(bool)
        return {"step": state["step"], "samples": state["step"] * batch_size, "seconds": round(state["seconds"], 1),
                "acc_all": float(ok[g].mean()), "acc_passive": float(ok[g & p].mean()),
                "acc_starforming": float(ok[g & ~p].mean())}

    return validate


def export_online(out_dir: str | Path, model_dir: str | Path) -> str:
    """Write a model directory (uncalibrated: temperature 1) from an online run's ``train_state``."""
    from .instrument import load_instrument
    from .skymask import instrument_sky_mask

    out = Path(out_dir)
    meta = json.loads((out / STATE_DIR / "state.json").read_text())
    inst = load_instrument()
    cfg = NetConfig.from_dict(meta["architecture"])
    net = SpectrumNet(cfg, inst, ZGrid())
    if meta.get("freeze_trunk"):
        for name in TRUNK_MODULES:
            getattr(net, name).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    _load_state(out, net, opt)
    net.eval()
    from .provenance import provenance

    training = {k: meta.get(k) for k in ("mode", "freeze_trunk", "seed", "sim_seed", "sim_config", "steps", "batch_size", "lr",
                                          "step", "seconds", "history", "device", "threads", "init_from")}
    training["samples_seen"] = meta["step"] * meta["batch_size"]
    training["provenance"] = provenance()
    calib = {"temperature": 1.0, "target_norm": meta["target_norm"], "thresholds": {}}
    return save_model(model_dir, net, inst, instrument_sky_mask(inst), PREPROCESSING_VERSION, calib, training)


@torch.no_grad()
def quick_validate(net, vds, inst, sky, zg, n: int, dev) -> float:
    """|Δz| < 0.01 fraction of a deterministic pass on the first ``n`` in-range validation objects."""
    net.eval()
    from .model.network import ones_masks

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
