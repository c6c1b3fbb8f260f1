"""Training on spectra simulated on the fly (:func:`train_online`), warm starts from a trained model
(:func:`warm_start`) and the export of an on-the-fly run's state as a model directory (:func:`export_online`)."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import save_model
from ..model.network import NetConfig, SpectrumNet
from ..model.zgrid import ZGrid
from ..preprocess import PREPROCESSING_VERSION, preprocess
from .common import STATE_DIR, _dropout_masks, _load_state, _new_net, _opt_step, _save_state, _targets

log = logging.getLogger(__name__)


def warm_start(net: SpectrumNet, model_dir: str | Path) -> dict:
    """Copy a trained model's weights into ``net`` (same trunk and head sizes); returns its calibration.

    Tensors of equal shape are copied; the 1×1 mix layer, which gains input columns for the template scan,
    gets the old weights in its first columns and zeros in the new ones, so the warm-started network computes
    exactly what the old one did until training moves it. Raises ``ValueError`` if another tensor differs.
    """
    from ..model.checkpoint import load_model

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
    from ..simulate.simulator import SimConfig, simulate_block

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
    The body (~75 lines) keeps the step loop in one piece (prefetch, step, validation, checkpoint, early end of
    a leg in the order they happen); set-up is :func:`_online_setup`, validation :func:`_online_validator`.

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
    from ..instrument import load_instrument
    from ..skymask import instrument_sky_mask

    inst = load_instrument()
    sky = instrument_sky_mask(inst)
    zg = ZGrid()
    if has_state:  # the saved run decides its architecture (a resumed leg is not given --arch again)
        arch = json.loads((out / STATE_DIR / "state.json").read_text()).get("architecture") or arch
    cfg, net = _new_net(inst, zg, arch, seed)
    tnorm = {"logmstar": [10.0, 0.9], "logsfr": [1.0, 0.8]}
    if cfg.xc_templates > 0:
        from ..model.xcorr import default_template_spectra

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
    from ..model.network import ones_masks
    from ..simulate.simulator import SimConfig, simulate_block

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
    from ..instrument import load_instrument
    from ..skymask import instrument_sky_mask

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
    from ..provenance import provenance

    training = {k: meta.get(k) for k in ("mode", "freeze_trunk", "seed", "sim_seed", "sim_config", "steps", "batch_size", "lr",
                                          "step", "seconds", "history", "device", "threads", "init_from")}
    training["samples_seen"] = meta["step"] * meta["batch_size"]
    training["provenance"] = provenance()
    calib = {"temperature": 1.0, "target_norm": meta["target_norm"], "thresholds": {}}
    return save_model(model_dir, net, inst, instrument_sky_mask(inst), PREPROCESSING_VERSION, calib, training)
