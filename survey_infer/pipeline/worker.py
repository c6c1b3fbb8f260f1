"""Worker side: the model-loading WorkerPlugin and the per-block task.

The task reads its rows straight from the input Zarr store, runs preprocess → trunk → T MC head passes →
screening in sub-blocks (memory bounded by ``SUB_ROWS``, not by the block or survey size), writes its aligned
region of the catalog, then its done-marker, and returns a small status record. No large array travels through
the scheduler.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..catalog.store import output_hash, read_block, write_block
from ..flags import flag_counts
from .faults import TransientIOError, fault_point, storage_message, transient_oserror
from .resume import (SUB_ROWS, DamagedBlockError, StaleEpochError, atomic_write_json, check_epoch, crc_update,
                     failure_path, hash_parts, input_stamp, intent_path, iter_input_rows, latest_marker, marker_path,
                     read_json, rows_hash)

TRANSIENT_BACKOFF_S = float(os.environ.get("SURVEY_INFER_TRANSIENT_BACKOFF", "1.0"))  # wait before a retry (s)
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
    lock_owner: str = ""  # the run's lock owner token: tasks check (epoch, owner) before every write
    versions: dict = field(default_factory=dict)  # the driver's software_versions(): checked in every task


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
        """Check the worker's software against the driver's, set its numerics and load the model (once).

        Raises
        ------
        RuntimeError
            The worker runs other software versions than the driver.
        """
        from ..model.checkpoint import load_model
        from ..provenance import software_versions

        mine = software_versions()
        diff = {k: (v, mine.get(k)) for k, v in self.versions.items() if mine.get(k) != v}
        if diff:
            raise RuntimeError(f"worker {getattr(worker, 'address', '?')} runs different software than the driver: "
                               + ", ".join(f"{k} driver={a} worker={b}" for k, (a, b) in diff.items()))
        _set_threads(self.torch_threads)
        if str(self.device).startswith("cuda"):  # IEEE fp32, deterministic kernels before cuBLAS starts (issue 15)
            from ..model.device import configure_numerics

            configure_numerics(self.device)
        model = load_model(self.model_dir, expected_sha256=self.sha256, device=self.device)
        if str(self.device).startswith("cuda"):
            from ..model.device import warm_up

            warm_up(model, self.device)
        if worker is not None:
            worker._survey_infer_model = model
        _LOCAL_MODELS[self.sha256] = model

    def teardown(self, worker=None):
        """Forget the loaded model."""
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
        ModelPlugin(ctx.model_dir, ctx.model_sha256, ctx.versions, ctx.device, ctx.torch_threads).setup(None)
    return _LOCAL_MODELS[ctx.model_sha256]


class SoftwareMismatchError(RuntimeError):
    """A worker runs other software versions than the driver (its results would not match the fingerprint)."""


_MY_VERSIONS: dict | None = None
_MY_HARDWARE: dict[str, dict] = {}


def check_versions(expected: dict) -> None:
    """Refuse to compute on a worker whose software differs from the driver's (checked in every task: a
    WorkerPlugin's ``setup`` error is only logged by Dask on workers that join late).

    Raises
    ------
    SoftwareMismatchError
        Naming each package with the driver's and this worker's version.
    """
    global _MY_VERSIONS
    if not expected:
        return
    if _MY_VERSIONS is None:
        from ..provenance import software_versions

        _MY_VERSIONS = software_versions()
    diff = {k: (v, _MY_VERSIONS.get(k)) for k, v in expected.items() if _MY_VERSIONS.get(k) != v}
    if diff:
        raise SoftwareMismatchError(
            f"worker {os.uname().nodename}:{os.getpid()} runs different software than the driver ("
            + ", ".join(f"{k} driver={a} worker={b}" for k, (a, b) in diff.items())
            + "); install the driver's versions there or run on nodes that have them")


def _hardware(device: str) -> dict:
    if device not in _MY_HARDWARE:
        from ..provenance import hardware

        _MY_HARDWARE[device] = hardware(device)
    return _MY_HARDWARE[device]


def process_block(block: int, lo: int, hi: int, ctx: RunContext, rows: np.ndarray | None = None) -> dict:
    """Compute and write one catalog block; returns a small status record.

    Parameters
    ----------
    block, lo, hi : block number and its row range in the catalog (= input rows).
    rows : optional sorted absolute row indices to (re)process (partial reprocessing); the other rows of the
        block are kept (read, verified against the block's latest marker, and written back with the new rows).

    Notes
    -----
    The run's epoch is checked before any work, before the write and before the done-marker: a task of a run
    that lost the catalog to a newer run (an orphan of a killed driver) writes nothing. Failures are returned
    (and recorded under ``_failures/``), never raised: the run goes on with the other blocks.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        check_epoch(ctx.catalog, ctx.epoch, ctx.lock_owner)
        check_versions(ctx.versions)
        model = _get_model(ctx)
        todo = np.arange(lo, hi) if rows is None else np.asarray(rows, np.int64)
        if len(todo) == 0 or todo[0] < lo or todo[-1] >= hi:
            raise ValueError(f"rows to process are outside block {block} [{lo}, {hi})")
        values, in_crc = _compute_rows(block, todo, model, ctx, timings)
        _write_and_mark(block, lo, hi, rows, todo, values, in_crc, ctx, timings)
        return {"block": block, "ok": True, "n": int(len(todo)), "seconds": time.perf_counter() - t_start,
                "timings": timings, "n_reliable": int(np.count_nonzero(values["z_reliable"])),
                "zwarn": flag_counts(values["zwarn"]), "max_rss_mb": _max_rss_mb()}
    except Exception as exc:  # noqa: BLE001 - reported per block, the run goes on
        return _failed(block, lo, hi, ctx, exc, t_start)


def _compute_rows(block: int, todo: np.ndarray, model, ctx: RunContext,
                  timings: dict[str, float]) -> tuple[dict[str, np.ndarray], int]:
    """Read the rows ``todo`` of the input in groups of :data:`SUB_ROWS` and infer them; returns the catalog
    columns of those rows and the CRC32 of the input bytes read (streamed: the block's input is never held whole).

    Raises
    ------
    RuntimeError
        An input read failed (naming the rows, the block and the store).
    """
    import torch
    import zarr

    g = zarr.open_group(ctx.input_store, mode="r", zarr_format=3, use_consolidated=False)
    cols: dict[str, list] = {}
    in_crc = 0
    reader = iter_input_rows(g, todo, SUB_ROWS)
    n_read = 0
    while True:
        t0 = time.perf_counter()
        try:
            if n_read == 0:
                fault_point("read", ctx.input_store, block)  # once per attempt, before the block's first read
            r, a, b, sel, arrs = next(reader)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - name the rows and the block in the error
            r0 = todo[todo // SUB_ROWS == todo[n_read] // SUB_ROWS]
            raise RuntimeError(f"cannot read input rows {int(r0[0])}..{int(r0[-1]) + 1} (block {block}) of "
                               f"{ctx.input_store}: {type(exc).__name__}: {exc}") from exc
        n_read += len(r)
        in_crc = crc_update(in_crc, hash_parts(arrs, sel))
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
        with torch.inference_mode():
            out = _infer(model, arrs, r, a, ctx, timings)
        out["object_id"] = arrs["object_id"][sel]
        for c in ("ra", "dec", *ctx.passthrough):
            if c in g:
                out[c] = g[c][a:b][sel]
        out["run_id"] = np.full(len(r), ctx.run_id, np.int32)
        for k, v in out.items():
            cols.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in cols.items()}, in_crc


def _write_and_mark(block: int, lo: int, hi: int, rows: np.ndarray | None, todo: np.ndarray,
                    values: dict[str, np.ndarray], in_crc: int, ctx: RunContext, timings: dict[str, float]) -> None:
    """Write the block's region of the catalog (whole, or merged with the rows kept), hash it as stored, then
    write its done-marker and clear its failure record and merge intent; the epoch is checked before each write."""
    names = sorted(values)
    t0 = time.perf_counter()
    check_epoch(ctx.catalog, ctx.epoch, ctx.lock_owner)
    if rows is None:
        fault_point("write", ctx.catalog, block)
        write_block(ctx.catalog, lo, hi, values)
    else:
        _merge_and_write(block, lo, hi, todo, values, ctx)
    fault_point("after-write", None, block)
    # the output hash is of the block as stored (read back): what a resume will compare against
    stored = read_block(ctx.catalog, lo, hi, names)
    out_hash = output_hash(stored)
    timings["write"] = time.perf_counter() - t0
    marker = {
        "block": block, "lo": lo, "hi": hi, "job": ctx.job, "run_id": ctx.run_id, "epoch": ctx.epoch,
        "fingerprint": ctx.fingerprint, "input_hash": f"{in_crc:08x}",
        "input_stamp": input_stamp(Path(ctx.input_store), lo, hi, ctx.chunk_rows),
        "output_names": names, "output_hash": out_hash, "whole": rows is None, "rows_hash": rows_hash(rows),
        "n_rows": int(len(todo)), "time": time.time(), "timings": timings, "host": os.uname().nodename,
        "pid": os.getpid(), "hardware": _hardware(ctx.device),
    }
    check_epoch(ctx.catalog, ctx.epoch, ctx.lock_owner)
    fault_point("marker", marker_path(Path(ctx.catalog), ctx.job, block), block)
    atomic_write_json(marker_path(Path(ctx.catalog), ctx.job, block), marker)
    fault_point("after-marker", None, block)
    for p in (failure_path(Path(ctx.catalog), ctx.job, block), intent_path(Path(ctx.catalog), ctx.job, block)):
        if p.exists():
            p.unlink()


def _failed(block: int, lo: int, hi: int, ctx: RunContext, exc: Exception, t_start: float) -> dict:
    """The status record of a failed block (recorded under ``_failures/`` unless the run lost the catalog).

    Raises
    ------
    TransientIOError
        A transient OSError (an NFS hiccup), after a short back-off, so that Dask retries the task (bounded).
    """
    transient = transient_oserror(exc)
    # no block number in these reasons: the summary groups consecutive blocks failing for one reason
    reason = storage_message(exc, "", ctx.catalog) or f"{type(exc).__name__}: {exc}"
    if transient is not None and not isinstance(exc, StaleEpochError):
        reason = (f"transient I/O error ({errno.errorcode.get(transient.errno, '?')}: "
                  f"{transient.strerror or transient}, {transient.filename or 'no path'})")
    rec = {"block": block, "ok": False, "lo": lo, "hi": hi, "reason": reason,
           "seconds": time.perf_counter() - t_start, "stale": isinstance(exc, StaleEpochError),
           "epoch": ctx.epoch, "job": ctx.job}
    if not rec["stale"]:
        try:
            check_epoch(ctx.catalog, ctx.epoch, ctx.lock_owner)
            atomic_write_json(failure_path(Path(ctx.catalog), ctx.job, block), {**rec, "time": time.time()})
        except (OSError, StaleEpochError):
            pass
    if transient is not None and not rec["stale"]:
        time.sleep(TRANSIENT_BACKOFF_S)  # let the hiccup pass, then Dask retries the task (bounded)
        raise TransientIOError(reason) from exc
    return rec


def _keep_hash(block_values: dict[str, np.ndarray], keep: np.ndarray) -> str:
    return output_hash({k: v[keep] for k, v in block_values.items()})


def _merge_and_write(block: int, lo: int, hi: int, todo: np.ndarray, values: dict, ctx: RunContext) -> None:
    """Partial reprocessing: replace rows ``todo`` of the block and write the whole block back.

    The block's other rows must be intact: the stored block must hash to its latest marker's output hash, or —
    when this job's own earlier merge was interrupted half-way — the kept rows must hash to what this job's
    intent recorded before that merge. Anything else is damage this job cannot repair (it does not have the
    other rows' model): the block fails with a message saying to run the job that owns those rows first.
    """
    cat = Path(ctx.catalog)
    latest = latest_marker(cat, block)
    if latest is None:
        raise DamagedBlockError(f"block {block} (rows {lo}..{hi}) of {cat} has never been computed: run the main "
                                f"job first, then reprocess")
    ref_names = sorted(latest.get("output_names") or values)
    names = sorted(set(ref_names) | set(values))
    try:
        cur = read_block(cat, lo, hi, names)
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt chunk
        raise DamagedBlockError(f"block {block} (rows {lo}..{hi}) of {cat} cannot be read ({type(exc).__name__}: "
                                f"{exc}); run the main job (job {latest.get('job')}, run {latest.get('run_id')}) with "
                                f"its original settings to repair it, then resume this job") from exc
    keep = np.ones(hi - lo, bool)
    keep[todo - lo] = False
    kept = _keep_hash(cur, keep)
    ipath = intent_path(cat, ctx.job, block)
    if output_hash({k: cur[k] for k in ref_names}) == latest.get("output_hash"):
        atomic_write_json(ipath, {"block": block, "epoch": ctx.epoch, "run_id": ctx.run_id, "keep_hash": kept,
                                  "names": names, "time": time.time()})
    else:
        intent = read_json(ipath)
        if not intent or intent.get("keep_hash") != kept or sorted(intent.get("names", [])) != names:
            raise DamagedBlockError(
                f"block {block} (rows {lo}..{hi}) of {cat} does not match its latest marker (job {latest.get('job')}, "
                f"run {latest.get('run_id')}, epoch {latest.get('epoch')}) outside the rows to reprocess: a torn or "
                f"overwritten chunk. Run the job that owns those rows with its original settings to repair the "
                f"block, then resume this job")
    fault_point("after-intent", None, block)
    merged = {}
    for k in names:
        v = cur[k].copy()
        if k in values:
            v[todo - lo] = np.asarray(values[k]).astype(v.dtype, copy=False)
        merged[k] = v
    check_epoch(ctx.catalog, ctx.epoch, ctx.lock_owner)
    fault_point("write", ctx.catalog, block)
    write_block(cat, lo, hi, merged)


def _infer(model, arrs: dict, rows: np.ndarray, a: int, ctx: RunContext, timings: dict) -> dict:
    """Catalog columns for ``rows`` (sorted absolute indices) given the input ``arrs`` of rows ``[a, …)``.

    ``infer_block`` places each object in slot (global row mod B) of its micro-batch window from a contiguous
    ``row_start``, and an object's outputs do not depend on its neighbours (DESIGN §5). A selection
    (reprocessing) is therefore run as the runs of consecutive micro-batch windows that hold selected rows, and
    the selected rows are taken from the result: bounded work (at most B rows per selected row) and the same
    bits as in a full run.
    """
    from ..model.inference import MICRO_BATCH, infer_block

    rows = np.asarray(rows, np.int64)
    n = len(arrs["object_id"])

    def call(s: int, e: int) -> dict:  # rows [a + s, a + e)
        return infer_block(model, arrs["flux"][s:e], arrs["ivar"][s:e], arrs["object_id"][s:e], a + s,
                           mask=None if arrs["mask"] is None else arrs["mask"][s:e], mc_samples=ctx.mc_samples,
                           seed=ctx.seed, keep_pz=ctx.keep_pz, device=ctx.device, timings=timings)

    if len(rows) == n:
        return call(0, n)
    B = MICRO_BATCH
    win = rows // B
    uw = np.unique(win)
    parts = []
    for run in np.split(uw, np.flatnonzero(np.diff(uw) != 1) + 1):
        s, e = max(a, int(run[0]) * B), min(a + n, (int(run[-1]) + 1) * B)
        res = call(s - a, e - a)
        pick = rows[(rows >= s) & (rows < e)] - s
        parts.append({k: v[pick] for k, v in res.items()})
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _max_rss_mb() -> float:
    """Peak resident memory of this (worker) process so far, MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

