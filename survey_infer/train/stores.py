"""Training on simulated survey stores (:func:`train_model`): epochs over groups of store rows, exact resume
from any checkpoint, then calibration on the validation survey."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import save_model
from ..model.zgrid import ZGrid
from ..preprocess import PREPROCESSING_VERSION, preprocess
from .common import (STATE_DIR, _dropout_masks, _load_state, _new_net, _opt_step, _order, _read_rows,
                     _save_state, _targets, quick_validate)

log = logging.getLogger(__name__)


def _training_inputs(ds) -> tuple:
    """Instrument and sky mask of the training survey (as recorded in its attrs); it must have the truth columns.

    Returns ``(inst, sky)``; raises :class:`~survey_infer.errors.UserError` naming a missing column.
    """
    from ..instrument import load_instrument

    train_store = ds.encoding.get("source", "(dataset)")
    inst = load_instrument(ds.attrs.get("instrument_config") or ds.attrs.get("instrument"))
    for need in ("z_true", "logmstar_true", "logsfr_true", "kind"):
        if need not in ds:
            from ..errors import UserError

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
            from ..errors import UserError

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
    from ..provenance import provenance

    training["provenance"] = provenance()
    run["net"].eval()
    calib = {"temperature": 1.0, "target_norm": run["tnorm"], "thresholds": {}}
    save_model(out, run["net"], run["inst"], run["sky"], PREPROCESSING_VERSION, calib, training)
    from ..calibrate import calibrate_model

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
    The body (~75 lines) keeps the epoch/group loop in one piece: checkpointing, the early end of a leg and the
    per-epoch validation read in the order they happen (the work per group is :func:`_train_group`).

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
