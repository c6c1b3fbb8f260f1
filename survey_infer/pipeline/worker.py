"""Worker side: the model-loading WorkerPlugin and the per-block task.

The task reads its rows straight from the input Zarr store, runs preprocess → trunk → T MC head passes →
screening in sub-blocks (memory bounded by ``SUB_ROWS``, not by the block or survey size), writes its aligned
region of the catalog, then its done-marker, and returns a small status record. No large array travels through
the scheduler.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io.catalog_store import write_block
from .resume import atomic_write_json, check_epoch, failure_path, input_hash, input_stamp, marker_path

SUB_ROWS = 1024  # rows read and processed at once inside a block
PLUGIN_NAME = "survey-infer-model"
_LOCAL_MODELS: dict[str, object] = {}


@dataclass(frozen=True)
class RunContext:
    """Everything a block task needs, small and picklable (no arrays, no model)."""

    catalog: str
    input_store: str
    job: str
    epoch: int
    run_id: int
    fingerprint: dict
    model_dir: str
    model_sha256: str
    mc_samples: int
    seed: int
    keep_pz: bool
    passthrough: tuple[str, ...]
    chunk_rows: dict = field(default_factory=dict)
    device: str = "cpu"
    torch_threads: int = 1


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process


from distributed.diagnostics.plugin import WorkerPlugin


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker (path + sha256 in the plugin, never weights) and checks versions.

    Registered with ``Client.register_plugin``; distributed calls :meth:`setup` on every worker, including
    workers that join later (e.g. Slurm jobs started after the run began).
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, model_dir: str, sha256: str, versions: dict, device: str = "cpu", torch_threads: int = 1):
        super().__init__()
        self.model_dir = str(model_dir)
        self.sha256 = sha256
        self.versions = versions
        self.device = device
        self.torch_threads = torch_threads

    def setup(self, worker=None):
        from ..model.checkpoint import load_model
        from .runner import software_versions

        mine = software_versions()
        diff = {k: (v, mine.get(k)) for k, v in self.versions.items() if mine.get(k) != v}
        if diff:
            raise RuntimeError(f"worker {getattr(worker, 'address', '?')} runs different software than the driver: "
                               + ", ".join(f"{k} driver={a} worker={b}" for k, (a, b) in diff.items()))
        _set_threads(self.torch_threads)
        model = load_model(self.model_dir, expected_sha256=self.sha256, device=self.device)
        if worker is not None:
            worker._survey_infer_model = model
        _LOCAL_MODELS[self.sha256] = model

    def teardown(self, worker=None):
        _LOCAL_MODELS.pop(self.sha256, None)


def _get_model(ctx: RunContext):
    try:
        from distributed import get_worker

        w = get_worker()
        m = getattr(w, "_survey_infer_model", None)
        if m is not None and m.sha256 == ctx.model_sha256:
            return m
    except ValueError:
        pass  # not on a worker: in-process execution
    if ctx.model_sha256 not in _LOCAL_MODELS:
        ModelPlugin(ctx.model_dir, ctx.model_sha256, {}, ctx.device, ctx.torch_threads).setup(None)
    return _LOCAL_MODELS[ctx.model_sha256]


def process_block(block: int, lo: int, hi: int, ctx: RunContext, rows: np.ndarray | None = None) -> dict:
    """Compute and write one catalog block; returns a small status record.

    Parameters
    ----------
    block, lo, hi : block number and its row range in the catalog (= input rows).
    rows : optional sorted absolute row indices to (re)process (partial reprocessing); others are kept.
    """
    import torch
    import zarr

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        model = _get_model(ctx)
        check_epoch(ctx.catalog, ctx.epoch)
        g = zarr.open_group(ctx.input_store, mode="r", zarr_format=3)
        todo = np.arange(lo, hi) if rows is None else np.asarray(rows, np.int64)
        has_mask = "mask" in g
        cols: dict[str, list] = {}
        in_crc: list[np.ndarray] = []
        for s0 in range(0, len(todo), SUB_ROWS):
            r = todo[s0:s0 + SUB_ROWS]
            a, b = int(r[0]), int(r[-1]) + 1
            t0 = time.perf_counter()
            try:
                flux = g["flux"][a:b]
                ivar = g["ivar"][a:b]
                mask = g["mask"][a:b] if has_mask else None
                oid = g["object_id"][a:b]
            except Exception as exc:  # noqa: BLE001 - name the chunk in the error
                raise RuntimeError(f"cannot read input rows {a}..{b} (block {block}) of {ctx.input_store}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            sel = r - a
            if len(sel) != b - a:
                flux, ivar, oid = flux[sel], ivar[sel], oid[sel]
                mask = mask[sel] if mask is not None else None
            in_crc += [flux, ivar, oid] + ([mask] if mask is not None else [])
            timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
            with torch.inference_mode():
                out = _infer(model, flux, ivar, mask, oid, r, ctx, timings)
            out["object_id"] = oid
            for c in ("ra", "dec", *ctx.passthrough):
                if c in g:
                    out[c] = g[c][a:b][sel]
            out["run_id"] = np.full(len(r), ctx.run_id, np.int32)
            for k, v in out.items():
                cols.setdefault(k, []).append(v)
        values = {k: np.concatenate(v) for k, v in cols.items()}
        t0 = time.perf_counter()
        check_epoch(ctx.catalog, ctx.epoch)
        out_hash = write_block(ctx.catalog, lo, hi, values, rows=None if rows is None else todo)
        timings["write"] = time.perf_counter() - t0
        marker = {
            "block": block, "lo": lo, "hi": hi, "job": ctx.job, "run_id": ctx.run_id, "epoch": ctx.epoch,
            "fingerprint": ctx.fingerprint, "input_hash": input_hash(in_crc),
            "input_stamp": input_stamp(Path(ctx.input_store), lo, hi, ctx.chunk_rows),
            "output_hash": out_hash, "n_rows": int(len(todo)), "time": time.time(),
            "timings": timings, "host": os.uname().nodename,
        }
        check_epoch(ctx.catalog, ctx.epoch)
        atomic_write_json(marker_path(Path(ctx.catalog), ctx.job, block), marker)
        fp = failure_path(Path(ctx.catalog), ctx.job, block)
        if fp.exists():
            fp.unlink()
        zw = values["zwarn"]
        return {"block": block, "ok": True, "n": int(len(todo)), "seconds": time.perf_counter() - t_start,
                "timings": timings, "n_reliable": int(values["z_reliable"][todo - lo if rows is not None else slice(None)].sum()),
                "zwarn": np.bincount(np.log2(zw[zw > 0] & -zw[zw > 0]).astype(int), minlength=32)[:24].tolist()}
    except Exception as exc:  # noqa: BLE001 - reported per block, the run goes on
        from .resume import StaleEpochError

        rec = {"block": block, "ok": False, "lo": lo, "hi": hi, "reason": f"{type(exc).__name__}: {exc}",
               "seconds": time.perf_counter() - t_start, "stale": isinstance(exc, StaleEpochError)}
        if not rec["stale"]:
            try:
                atomic_write_json(failure_path(Path(ctx.catalog), ctx.job, block), {**rec, "time": time.time()})
            except OSError:
                pass
        return rec


def _infer(model, flux, ivar, mask, oid, rows, ctx: RunContext, timings: dict) -> dict:
    from ..model.inference import infer_block

    # infer_block places each object in slot (global row mod B); rows may be non-contiguous (reprocessing)
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return infer_block(model, flux, ivar, oid, int(rows[0]), mask=mask, mc_samples=ctx.mc_samples,
                           seed=ctx.seed, keep_pz=ctx.keep_pz, device=ctx.device, timings=timings)
    parts = [infer_block(model, flux[i:i + 1], ivar[i:i + 1], oid[i:i + 1], int(rows[i]),
                         mask=None if mask is None else mask[i:i + 1], mc_samples=ctx.mc_samples, seed=ctx.seed,
                         keep_pz=ctx.keep_pz, device=ctx.device, timings=timings) for i in range(len(rows))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def context_dict(ctx: RunContext) -> dict:
    return asdict(ctx)
