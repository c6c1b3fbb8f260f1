"""The driver of ``survey-infer run``: validate, create or resume the catalog, map block tasks over a Dask
cluster with a bounded number in flight, record the run.

One Dask task = one block of objects = one aligned region of the catalog (see
:mod:`survey_infer.io.catalog_store`); the task returns a small status record. Partial reprocessing (a block
range, an object list, a selection on the catalog) is a job of its own with its own markers and ``run_id``,
updating the catalog in place; ``attrs["runs"]`` keeps the history and every row's ``run_id`` says which run
wrote it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..flags import ZWARN_BITS, bit_table
from ..io.catalog_store import block_bounds, create_catalog, open_catalog, output_hash, passthrough_columns, read_block
from ..io.survey_store import SurveyStoreError, validate_survey
from ..provenance import provenance, utc_now
from .resume import (FingerprintMismatch, LeaseLock, atomic_write_json, failure_path, fingerprint_diff, input_hash,
                     input_stamp, marker_path, read_json)
from .worker import SUB_ROWS, ModelPlugin, RunContext, process_block

log = logging.getLogger(__name__)
MAX_BLOCK = 32768
JOBS = "_jobs"


class RunError(RuntimeError):
    """The run cannot start (bad input, incompatible model or catalog); the message says why."""


@dataclass
class RunSummary:
    catalog: str
    job: str
    run_id: int
    epoch: int
    n_objects: int
    n_blocks: int
    blocks_done_before: int
    blocks_computed: int
    blocks_failed: list = field(default_factory=list)
    seconds: float = 0.0
    spectra_per_s: float = 0.0
    flag_counts: dict = field(default_factory=dict)
    n_reliable: int = 0
    timings: dict = field(default_factory=dict)
    dashboard: str | None = None

    @property
    def ok(self) -> bool:
        return not self.blocks_failed


def software_versions() -> dict:
    """Versions that must match between driver and workers."""
    import numpy
    import torch
    import zarr

    return {"survey_infer": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "zarr": zarr.__version__}


def default_block_objects(n: int, workers: int) -> int:
    """Block size: ≥ 4 blocks per worker for balance, multiples of 256, at most 32,768 (file count on cluster
    file systems: ~35 files per block → ≈1,000 files per million objects at the maximum)."""
    target = math.ceil(n / max(1, 4 * workers))
    return int(min(MAX_BLOCK, max(256, math.ceil(target / 256) * 256)))


def numerics_fingerprint(model, mc_samples: int, seed: int, keep_pz: bool, pz_dtype: str, device: str) -> dict:
    import torch

    from ..model.inference import MICRO_BATCH
    from ..skymask import mask_hash

    return {
        "model_sha256": model.sha256,
        "preprocessing_version": model.meta.get("preprocessing_version"),
        "sky_mask_hash": mask_hash(model.sky_mask),
        "mc_samples": int(mc_samples),
        "seed": int(seed),
        "z_grid": model.zgrid.hash,
        "dtypes": {"pz": pz_dtype if keep_pz else None, "estimates": "float32"},
        "torch": torch.__version__.split("+")[0],
        "device_class": device,
        "micro_batch": MICRO_BATCH,
    }


def _selection_rows(cat_path: Path, n: int, block_objects: int, chunks: str | None, objects: str | None,
                    where: str | None) -> np.ndarray | None:
    """Rows selected by --chunks A:B, --objects FILE or --where EXPR (None = all rows)."""
    if chunks:
        try:
            a, b = (int(x) if x else None for x in chunks.split(":"))
        except ValueError as exc:
            raise RunError(f"--chunks {chunks!r}: expected A:B block numbers") from exc
        nb = len(block_bounds(n, block_objects))
        a = 0 if a is None else a
        b = nb if b is None else b
        if not (0 <= a < b <= nb):
            raise RunError(f"--chunks {chunks}: the catalog has blocks 0..{nb - 1}")
        return np.arange(a * block_objects, min(n, b * block_objects))
    if objects:
        p = Path(objects)
        if not p.exists():
            raise RunError(f"--objects {objects}: file not found")
        ids = np.array([int(t) for t in p.read_text().split() if t.strip() and not t.startswith("#")], np.int64)
        cat = open_catalog(cat_path)
        oid = cat["object_id"].values
        pos = {int(v): i for i, v in enumerate(oid)}
        missing = [int(i) for i in ids if int(i) not in pos]
        if missing:
            raise RunError(f"--objects {objects}: {len(missing)} id(s) not in the catalog, e.g. {missing[:5]}")
        return np.array(sorted(pos[int(i)] for i in ids), np.int64)
    if where:
        cat = open_catalog(cat_path)
        cols = {v: cat[v].values for v in cat.data_vars if cat[v].dims == ("object",)}
        try:
            sel = eval(where, {"__builtins__": {}, "np": np}, cols)  # noqa: S307 - column names only
        except Exception as exc:  # noqa: BLE001
            raise RunError(f"--where {where!r}: cannot evaluate on the catalog columns ({exc})") from exc
        return np.flatnonzero(np.asarray(sel, bool))
    return None


def _job_for(cat_path: Path, rows: np.ndarray | None, fingerprint: dict, spec: str) -> tuple[str, np.ndarray | None]:
    """Main job, or a reprocessing job keyed by (selection spec, fingerprint), its rows frozen on first start."""
    if rows is None and not spec:
        return "main", None
    key = hashlib.sha256(json.dumps([spec, fingerprint], sort_keys=True).encode()).hexdigest()[:10]
    job = f"reprocess-{key}"
    d = cat_path / JOBS
    d.mkdir(exist_ok=True)
    f = d / f"{job}.npy"
    if f.exists():
        rows = np.load(f, allow_pickle=False)
    elif rows is not None:
        tmp = d / f".{job}.tmp.npy"
        np.save(tmp, rows.astype(np.int64), allow_pickle=False)
        tmp.replace(f)
    return job, rows


def block_is_done(cat_path: Path, job: str, block: int, lo: int, hi: int, fingerprint: dict, input_store: Path,
                  chunk_rows: dict, verify_output: bool = True) -> tuple[bool, str]:
    """Whether a block's marker proves it complete (see :mod:`survey_infer.pipeline.resume`)."""
    m = read_json(marker_path(cat_path, job, block))
    if not m:
        return False, "no marker"
    if m.get("lo") != lo or m.get("hi") != hi:
        return False, "block bounds changed"
    if m.get("fingerprint") != fingerprint:
        return False, "fingerprint differs"
    if m.get("input_stamp") != input_stamp(input_store, lo, hi, chunk_rows):
        # files touched: compare the content hash before recomputing
        import zarr

        g = zarr.open_group(str(input_store), mode="r", zarr_format=3)
        arrs = []
        for s0 in range(lo, hi, SUB_ROWS):
            s1 = min(hi, s0 + SUB_ROWS)
            arrs += [g["flux"][s0:s1], g["ivar"][s0:s1], g["object_id"][s0:s1]]
            if "mask" in g:
                arrs.append(g["mask"][s0:s1])
        if job != "main" or input_hash(arrs) != m.get("input_hash"):
            return False, "input changed"
    if verify_output and job == "main":
        names = sorted(m.get("output_names") or [])
        if not names:
            names = None
        stored = read_block(cat_path, lo, hi, names)
        stored.pop("z_grid", None)
        if output_hash(stored) != m.get("output_hash"):
            return False, "stored output does not match the marker (torn or overwritten chunk)"
    return True, "done"


def _chunk_rows(input_store: Path) -> dict[str, int]:
    import zarr

    g = zarr.open_group(str(input_store), mode="r", zarr_format=3)
    return {k: int(g[k].chunks[0]) for k in ("flux", "ivar", "mask", "object_id") if k in g}


def run_catalog(input_store: str | Path, output: str | Path, *, model: str | Path = "default", cluster: str = "local",
                workers: int = 2, mc_samples: int = 50, seed: int = 0, keep_pz: bool = True,
                pz_dtype: str = "float16", block_objects: int | None = None, chunks: str | None = None,
                objects: str | None = None, where: str | None = None, reprocess: bool = False,
                progress: bool = True, max_in_flight: int | None = None, client=None, device: str | None = None,
                lease_s: float = 60.0, slurm_options: dict | None = None, torch_threads: int = 1,
                print_fn=print) -> RunSummary:
    """Run (or resume) the catalog job; see :mod:`survey_infer.pipeline.runner`.

    Parameters
    ----------
    input_store : survey store (Zarr). output : catalog path (Zarr; created or resumed).
    model : ``default`` or a model directory. cluster : ``local`` | ``cuda`` | ``slurm`` | address | scheduler
    file | ``inprocess`` (no Dask, for tests and debugging).
    workers : local worker processes or Slurm jobs. mc_samples : T. seed : MC seed.
    chunks / objects / where : partial reprocessing selections (need an existing catalog).
    reprocess : allow a different numerics fingerprint (a new model or T) on an existing catalog.
    """
    from ..cluster import cluster_device, make_cluster
    from ..model.checkpoint import load_model

    t_start = time.time()
    input_store, cat_path = Path(input_store), Path(output)
    try:
        attrs = validate_survey(input_store)
    except SurveyStoreError as exc:
        raise RunError(str(exc)) from exc
    n = int(attrs["n_objects"])
    mdl = load_model(model)
    import zarr

    g_in = zarr.open_group(str(input_store), mode="r", zarr_format=3)
    if not mdl.instrument.matches(g_in["wave"][:]):
        raise RunError(f"input store {input_store} is on grid '{attrs.get('instrument')}' ({g_in['wave'].shape[0]} "
                       f"channels, hash {attrs.get('grid_hash')}) but model {mdl.path} expects '{mdl.instrument.name}' "
                       f"({mdl.instrument.n_wave} channels, hash {mdl.instrument.grid_hash}); refusing before any work")
    device = device or cluster_device(cluster)
    fp = numerics_fingerprint(mdl, mc_samples, seed, keep_pz, pz_dtype, device)
    selection_spec = chunks and f"chunks={chunks}" or objects and f"objects={Path(objects).resolve()}" or \
        where and f"where={where}" or ""
    if selection_spec and not (cat_path / "zarr.json").exists():
        raise RunError(f"--chunks/--objects/--where reprocess part of an existing catalog; {cat_path} does not exist")
    created = False
    if not (cat_path / "zarr.json").exists():
        bo = int(block_objects or default_block_objects(n, workers))
        create_catalog(cat_path, n, mdl.zgrid.centres, bo, passthrough=passthrough_columns(g_in), keep_pz=keep_pz,
                       pz_dtype=pz_dtype, attrs={
                           "title": "survey-infer catalog", "software_version": __version__,
                           "model_sha256": mdl.sha256, "model_dir": str(mdl.path), "fingerprint": fp,
                           "mc_samples": int(mc_samples), "seed": int(seed), "created": utc_now(),
                           "input_store": str(input_store.resolve()), "input_n_objects": n, "block_objects": bo,
                           "zwarn_bits": bit_table(), "zwarn_bad_mask": int(sum(b.value for b in ZWARN_BITS if b.bad)),
                           "calibration": mdl.calibration, "runs": [], "provenance": provenance()})
        created = True
    g_cat = zarr.open_group(str(cat_path), mode="r+", zarr_format=3)
    cattrs = dict(g_cat.attrs)
    bo = int(cattrs["block_objects"])
    n_cat = int(g_cat["object_id"].shape[0])
    if n_cat != n:
        if n < n_cat:
            raise RunError(f"input store {input_store} now has {n} rows but catalog {cat_path} has {n_cat}: rows were "
                           f"removed; write a new catalog")
    lock = LeaseLock(cat_path, lease_s=lease_s)
    epoch = lock.acquire()
    try:
        if n_cat != n:  # input was appended to: grow the catalog (new blocks appear, the last one is recomputed)
            for name in g_cat.array_keys():
                arr = g_cat[name]
                if arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "object":
                    arr.resize((n,) + arr.shape[1:])
            log.info("catalog grown from %d to %d rows (input appended)", n_cat, n)
        if not created and not selection_spec and cattrs.get("fingerprint") != fp and not reprocess:
            diff = fingerprint_diff(cattrs.get("fingerprint", {}), fp)
            raise FingerprintMismatch(
                f"catalog {cat_path} was made with different numerics:\n  " + "\n  ".join(diff) +
                "\nResume with the same settings, or pass --reprocess to recompute with the new ones "
                "(optionally with --chunks/--objects/--where for a subset).")
        rows = _selection_rows(cat_path, n, bo, chunks, objects, where)
        spec = selection_spec or ("all" if reprocess and cattrs.get("fingerprint") != fp and not created else "")
        job, rows = _job_for(cat_path, rows, fp, spec)
        runs = list(cattrs.get("runs", []))
        prior = [r for r in runs if r.get("job") == job and r.get("fingerprint") == fp]
        run_id = int(prior[-1]["run_id"]) if prior else (max([r["run_id"] for r in runs], default=-1) + 1)
        bounds = block_bounds(n, bo)
        chunk_rows = _chunk_rows(input_store)
        if rows is not None:
            blk_of = rows // bo
            todo_blocks = {int(b): rows[blk_of == b] for b in np.unique(blk_of)}
        else:
            todo_blocks = {i: None for i in range(len(bounds))}
        pending, done_before = [], 0
        for b, r in todo_blocks.items():
            lo, hi = bounds[b]
            ok, why = block_is_done(cat_path, job, b, lo, hi, fp, input_store, chunk_rows)
            if ok:
                done_before += 1
            else:
                pending.append((b, lo, hi, r))
                if why not in ("no marker",):
                    log.info("block %d will be recomputed: %s", b, why)
        run_rec = {"run_id": run_id, "job": job, "selection": spec or "all", "fingerprint": fp, "model_dir": str(mdl.path),
                   "epoch": epoch, "started": utc_now(), "status": "running", "command": provenance()["command"]}
        runs = [r for r in runs if not (r.get("run_id") == run_id)] + [run_rec]
        g_cat.attrs.update({"runs": runs})
        ctx = RunContext(catalog=str(cat_path.resolve()), input_store=str(input_store.resolve()), job=job, epoch=epoch,
                         run_id=run_id, fingerprint=fp, model_dir=str(mdl.path), model_sha256=mdl.sha256,
                         mc_samples=int(mc_samples), seed=int(seed), keep_pz=keep_pz,
                         passthrough=tuple(passthrough_columns(g_in)), chunk_rows=chunk_rows, device=device,
                         torch_threads=torch_threads)
        n_todo = sum((hi - lo) if r is None else len(r) for _, lo, hi, r in pending)
        print_fn(f"survey-infer run: {n:,} objects in {len(bounds)} blocks of {bo}; job {job} (run_id {run_id}, "
                 f"epoch {epoch}); {done_before} block(s) already done, {len(pending)} to compute ({n_todo:,} objects)")
        summary = RunSummary(catalog=str(cat_path), job=job, run_id=run_id, epoch=epoch, n_objects=n,
                             n_blocks=len(todo_blocks), blocks_done_before=done_before, blocks_computed=0)
        results = _execute(pending, ctx, cluster, workers, client, max_in_flight, progress, mdl, slurm_options or {},
                           summary, print_fn)
        failed = [r for r in results if not r.get("ok")]
        summary.blocks_failed = [{"block": r["block"], "reason": r["reason"]} for r in failed]
        summary.blocks_computed = len(results) - len(failed)
        fl = np.zeros(24, np.int64)
        for r in results:
            if r.get("ok"):
                fl += np.asarray(r["zwarn"], np.int64)
                summary.n_reliable += r["n_reliable"]
                for k, v in r["timings"].items():
                    summary.timings[k] = summary.timings.get(k, 0.0) + v
        summary.flag_counts = {b.name: int(fl[b.bit]) for b in ZWARN_BITS}
        summary.seconds = time.time() - t_start
        summary.spectra_per_s = n_todo / summary.seconds if summary.seconds > 0 else 0.0
        run_rec.update({"finished": utc_now(), "status": "complete" if summary.ok else "incomplete",
                        "blocks_computed": summary.blocks_computed, "blocks_failed": summary.blocks_failed,
                        "seconds": round(summary.seconds, 3)})
        runs = [r for r in dict(g_cat.attrs).get("runs", []) if r.get("run_id") != run_id] + [run_rec]
        if lock.still_owner():
            g_cat.attrs.update({"runs": runs})
        return summary
    finally:
        lock.release()


def _execute(pending, ctx: RunContext, cluster: str, workers: int, client, max_in_flight, progress, mdl,
             slurm_options, summary: RunSummary, print_fn) -> list[dict]:
    from tqdm import tqdm

    total = sum((hi - lo) if r is None else len(r) for _, lo, hi, r in pending)
    bar = tqdm(total=total, unit="spec", desc="run", disable=not progress, smoothing=0.1)
    t0 = time.time()
    results: list[dict] = []

    def done(rec):
        results.append(rec)
        if rec.get("ok"):
            bar.update(rec["n"])
        else:
            bar.write(f"block {rec['block']} failed: {rec['reason']}")
        el = time.time() - t0
        bar.set_postfix_str(f"{bar.n / el:,.0f} spec/s" if el > 0 else "")

    if not pending:
        bar.close()
        return results
    if cluster == "inprocess":
        from .worker import _set_threads

        _set_threads(ctx.torch_threads)
        for b, lo, hi, r in pending:
            done(process_block(b, lo, hi, ctx, r))
        bar.close()
        return results
    from distributed import as_completed

    from ..cluster import make_cluster

    own = None
    if client is None:
        client, own = make_cluster(cluster, workers, **slurm_options) if cluster == "slurm" else make_cluster(cluster, workers)
    try:
        summary.dashboard = client.dashboard_link
        print_fn(f"dashboard: {client.dashboard_link}")
        client.register_plugin(ModelPlugin(ctx.model_dir, ctx.model_sha256, software_versions(), ctx.device,
                                           ctx.torch_threads), name=f"survey-infer-model-{ctx.model_sha256[:12]}")
        n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})) or workers)
        limit = max_in_flight or max(2, 2 * n_workers)
        queue = list(pending)
        futs = as_completed()
        in_flight = 0

        def submit_next():
            nonlocal in_flight
            b, lo, hi, r = queue.pop(0)
            futs.add(client.submit(process_block, b, lo, hi, ctx, r, key=f"block-{ctx.job}-{b}-e{ctx.epoch}",
                                   pure=False))
            in_flight += 1

        while queue and in_flight < limit:
            submit_next()
        for fut in futs:
            in_flight -= 1
            try:
                rec = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after repeated worker deaths
                rec = {"block": int(str(fut.key).split("-")[-2]), "ok": False, "reason": f"{type(exc).__name__}: {exc}"}
            done(rec)
            fut.release()
            while queue and in_flight < limit:
                submit_next()
    finally:
        bar.close()
        if own is not None:
            client.close()
            own.close()
    return results
