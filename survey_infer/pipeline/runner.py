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
import os
import time
import uuid
from pathlib import Path

import numpy as np

from .. import __version__
from ..flags import BAD_MASK, NBITS, ZWARN_BITS, bit_table, layout_mismatch
from ..catalog.schema import PASSTHROUGH, PER_OBJECT
from ..catalog.store import block_bounds, create_catalog, open_catalog, output_hash, passthrough_columns, read_block
from ..io.survey_store import SurveyStoreError, validate_survey
from ..provenance import provenance, utc_now
from .faults import TransientIOError, fault_point, storage_message
from .resume import (FAILURES, LOCK, LOCK_DIR, MARKERS, FingerprintMismatch, LeaseLock, atomic_write_json, failure_path,
                     fingerprint_diff, hash_parts, input_hash, input_stamp, iter_input_rows, latest_marker,
                     load_markers, marker_path, read_json, rows_hash)
from .summary import RunSummary
from .worker import SUB_ROWS, ModelPlugin, RunContext, process_block
from ..errors import RunError, CatalogStorageError  # noqa: F401  (defined in survey_infer.errors)

log = logging.getLogger(__name__)
MAX_BLOCK = 32768
CHECK_THREADS = 4  # threads verifying done-markers when a run starts
RUN_ID_IN_MEMORY = 20_000_000  # catalogs up to this many rows have their run_id column read at once on resume
TRANSIENT_RETRIES = 3  # a block failing on a transient OSError (NFS hiccup) is retried this many times
JOBS = "_jobs"


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
    from ..screening import SCREENING_VERSION
    from ..skymask import mask_hash

    return {
        "model_sha256": model.sha256,
        "preprocessing_version": model.meta.get("preprocessing_version"),
        "screening_version": SCREENING_VERSION,
        "sky_mask_hash": mask_hash(model.sky_mask),
        "mc_samples": int(mc_samples),
        "seed": int(seed),
        "z_grid": model.zgrid.hash,
        "dtypes": {"pz": pz_dtype if keep_pz else None, "estimates": "float32"},
        "torch": torch.__version__.split("+")[0],
        "device_class": device,
        "micro_batch": MICRO_BATCH,
        **_gpu_numerics(device),
    }


def _gpu_numerics(device: str) -> dict:
    """On a GPU, the micro-batch size really used and the fp32 precision (issue 15); nothing on the CPU, whose
    fingerprint keeps its keys (existing CPU catalogs resume)."""
    if not str(device).startswith("cuda"):
        return {}
    from ..model.hotpath import pipeline_micro_batch

    return {"micro_batch": pipeline_micro_batch(device), "fp32_precision": "ieee"}


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
        toks = []
        for ln, line in enumerate(p.read_text().splitlines(), 1):
            for t in line.split("#", 1)[0].replace(",", " ").split():
                try:
                    toks.append(int(t))
                except ValueError as exc:
                    raise RunError(f"--objects {objects}, line {ln}: {t!r} is not an integer object id") from exc
        ids = np.unique(np.array(toks, np.int64))
        if not len(ids):
            raise RunError(f"--objects {objects}: no object ids in the file")
        cat = open_catalog(cat_path)
        oid = cat["object_id"].values
        pos = {int(v): i for i, v in enumerate(oid)}
        missing = [int(i) for i in ids if int(i) not in pos]
        if missing:
            raise RunError(f"--objects {objects}: {len(missing)} id(s) not in the catalog, e.g. "
                           f"{', '.join(map(str, missing[:5]))}")
        return np.array(sorted(pos[int(i)] for i in ids), np.int64)
    if where:
        from ..selection import SelectionError, select_rows

        cat = open_catalog(cat_path)
        try:  # a safe expression language (no eval): see survey_infer.selection
            return select_rows(where, {k: v for k, v in cat.data_vars.items() if v.dims == ("object",)}, n)
        except SelectionError as exc:
            raise RunError(f"--where {where!r}: {exc}") from exc
    return None


def _job_for(cat_path: Path, rows: np.ndarray | None, fingerprint: dict, spec: str) -> tuple[str, np.ndarray | None]:
    """Main job, or a reprocessing job keyed by (selection spec, fingerprint), its rows frozen on first start."""
    if not spec:
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


def job_rows(cat_path: str | Path, job: str) -> np.ndarray | None:
    """The frozen rows of a reprocessing job (None: the main job, or a job over every row)."""
    f = Path(cat_path) / JOBS / f"{job}.npy"
    return np.load(f, allow_pickle=False) if f.exists() else None


def _is_whole(m: dict) -> bool:
    return bool(m.get("whole", m.get("job") == "main"))


def block_is_done(cat_path: Path, job: str, block: int, lo: int, hi: int, fingerprint: dict, input_store: Path,
                  chunk_rows: dict, verify_output: bool = True, *, rows: np.ndarray | None = None,
                  run_id: int | None = None, markers: dict | None = None,
                  run_ids: np.ndarray | None = None) -> tuple[bool, str]:
    """Whether ``job``'s marker proves block ``block`` complete (see :mod:`survey_infer.pipeline.resume`).

    Parameters
    ----------
    rows : the job's rows in this block (a reprocessing selection); None = the whole block.
    run_id : the job's run id; rows carrying an older run id were rewritten since (by an older job's later run).
    markers : :func:`~survey_infer.pipeline.resume.load_markers` of the catalog (read here when None).
    run_ids : the catalog's ``run_id`` column (read here when None and needed).

    Returns
    -------
    (done, reason) — the reason says why a block must be (re)computed.
    """
    markers = load_markers(cat_path) if markers is None else markers
    m = markers.get(job, {}).get(block)
    if not m:
        return False, "no marker"
    if m.get("lo") != lo or m.get("hi") != hi:
        return False, "block bounds changed (input appended)"
    if m.get("fingerprint") != fingerprint:
        return False, "fingerprint differs"
    if rows_hash(rows) != m.get("rows_hash") and not (rows is None and "rows_hash" not in m):
        return False, "selection differs"
    todo = np.arange(lo, hi) if rows is None else np.asarray(rows, np.int64)
    if m.get("input_stamp") != input_stamp(input_store, lo, hi, chunk_rows):
        # files touched (copied, restored, appended to): compare the content hash before recomputing
        import zarr

        try:
            g = zarr.open_group(str(input_store), mode="r", zarr_format=3, use_consolidated=False)
            parts = []
            for _r, _a, _b, sel, arrs in iter_input_rows(g, todo, SUB_ROWS):
                parts += hash_parts(arrs, sel)
            same = input_hash(parts) == m.get("input_hash")
        except Exception:  # noqa: BLE001 - unreadable input: recompute (and fail there with the reason)
            same = False
        if not same:
            return False, "input changed"
    if verify_output:
        latest = latest_marker(cat_path, block, markers) or m
        names = latest.get("output_names")
        try:
            stored = read_block(cat_path, lo, hi, sorted(names) if names else None)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt chunk
            return False, f"stored block unreadable ({type(exc).__name__}): torn chunk"
        stored.pop("z_grid", None)
        if output_hash(stored) != latest.get("output_hash"):
            return False, (f"stored block does not match its latest marker (job {latest.get('job')}, epoch "
                           f"{latest.get('epoch')}): torn, missing or overwritten chunk")
    if run_id is not None:
        if run_ids is None:
            import zarr

            rid = zarr.open_group(str(cat_path), mode="r", zarr_format=3,
                                  use_consolidated=False)["run_id"][lo:hi][todo - lo]
        else:
            rid = run_ids[todo]
        if (rid < run_id).any():
            return False, "rows were rewritten since by an older job"
    return True, "done"


def _chunk_rows(input_store: Path) -> dict[str, int]:
    import zarr

    g = zarr.open_group(str(input_store), mode="r", zarr_format=3, use_consolidated=False)
    return {k: int((g[k].shards or g[k].chunks)[0]) for k in ("flux", "ivar", "mask", "object_id") if k in g}


# ---- the catalog folder ----------------------------------------------------------------------------------------
_OWN = {LOCK, LOCK + ".claim", LOCK_DIR, MARKERS, JOBS, FAILURES, "zarr.json", "pz", "z_grid", *PER_OBJECT, *PASSTHROUGH}


def _check_output(cat_path: Path) -> None:
    """Refuse an output path that exists and is not (the beginning of) a survey-infer catalog."""
    if cat_path.exists() and not cat_path.is_dir():
        raise RunError(f"--output {cat_path} exists and is a file, not a catalog")
    if cat_path.is_dir() and not (cat_path / "zarr.json").exists():
        foreign = sorted(p.name for p in cat_path.iterdir() if p.name not in _OWN and not p.name.startswith("."))
        if foreign:
            raise RunError(f"--output {cat_path} exists and is not a survey-infer catalog (it holds {foreign[:5]}); "
                           f"choose a new path")


def _create_in_place(cat_path: Path, **kwargs) -> None:
    """Create the catalog template while holding its lock: build it in a sibling temporary folder, then move
    its entries in (``zarr.json`` last, so that the catalog exists only once complete). Leftovers of an
    interrupted creation (and markers of a catalog whose metadata was removed) are cleared first."""
    import shutil
    import uuid

    for p in cat_path.iterdir():
        if p.name in (LOCK, LOCK + ".claim", LOCK_DIR):
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for stale in cat_path.parent.glob(f".{cat_path.name}.creating-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = cat_path.parent / f".{cat_path.name}.creating-{uuid.uuid4().hex[:8]}"
    try:
        create_catalog(tmp, **kwargs)
        for p in sorted(tmp.iterdir()):
            if p.name != "zarr.json":
                os.rename(p, cat_path / p.name)
        os.rename(tmp / "zarr.json", cat_path / "zarr.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def validate_options(*, cluster: str, workers: int, mc_samples: int, block_objects: int | None,
                     max_in_flight: int | None, lease_s: float, lock_wait_s: float, torch_threads: int,
                     pz_dtype: str, device: str | None, cluster_grace_s: float, cluster_wait_s: float) -> None:
    """Check every numeric and cluster option before any work or any file is created.

    Raises
    ------
    RunError
        One line naming the option and the value (``--workers 0``, ``--max-in-flight -1``, ...).
    ClusterError
        An unusable Dask ``temporary-directory`` for a local cluster, or an unknown ``--cluster``.
    """
    from .clusters import check_cluster_kind

    def whole(name: str, v, lo: int) -> None:
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise RunError(f"{name} must be an integer >= {lo}, got {v!r}")

    def seconds(name: str, v, positive: bool) -> None:
        try:
            ok = math.isfinite(float(v)) and (float(v) > 0 if positive else float(v) >= 0)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise RunError(f"{name} must be a finite number of seconds {'> 0' if positive else '>= 0'}, got {v!r}")

    whole("--workers", workers, 1)
    whole("--mc-samples", mc_samples, 1)
    whole("--block-objects", block_objects, 1)
    whole("--max-in-flight", max_in_flight, 1)
    whole("torch threads", torch_threads, 1)
    seconds("--lease-seconds", lease_s, True)
    seconds("--lock-wait", lock_wait_s, False)
    seconds("--cluster-grace", cluster_grace_s, True)
    seconds("--cluster-wait", cluster_wait_s, False)
    if pz_dtype not in ("float16", "float32"):
        raise RunError(f"--pz-dtype must be float16 or float32, got {pz_dtype!r}")
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise RunError(f"--device must be cpu or cuda, got {device!r}")
    check_cluster_kind(cluster)


def _update_run_record(g_cat, run_rec: dict) -> None:
    runs = [r for r in dict(g_cat.attrs).get("runs", []) if r.get("run_id") != run_rec["run_id"]] + [run_rec]
    g_cat.attrs.update({"runs": runs})
    from ..catalog.store import consolidate_catalog

    consolidate_catalog(g_cat.store)  # keeps a user's plain xarray.open_zarr(catalog) silent (the update drops it)


def run_catalog(input_store: str | Path, output: str | Path, *, model: str | Path = "default", cluster: str = "local",
                workers: int = 2, mc_samples: int = 50, seed: int = 0, keep_pz: bool = True,
                pz_dtype: str = "float16", block_objects: int | None = None, chunks: str | None = None,
                objects: str | None = None, where: str | None = None, reprocess: bool = False,
                progress: bool = True, max_in_flight: int | None = None, client=None, device: str | None = None,
                lease_s: float = 60.0, slurm_options: dict | None = None, torch_threads: int = 1,
                lock_wait_s: float = 0.0, cluster_grace_s: float = 60.0, cluster_wait_s: float = 60.0,
                print_fn=print) -> RunSummary:
    """Run (or resume) the catalog job; see :mod:`survey_infer.pipeline.runner`.

    Parameters
    ----------
    input_store : survey store (Zarr). output : catalog path (Zarr; created or resumed).
    model : ``default`` or a model directory. cluster : ``local`` | ``cuda`` | ``slurm`` | address | scheduler
    file | ``inprocess`` (no Dask, for tests and debugging).
    workers : local worker processes or Slurm jobs. mc_samples : T. seed : MC seed.
    chunks / objects / where : partial reprocessing selections (need an existing catalog).
    reprocess : allow a different numerics fingerprint (a new model or T) on an existing catalog: a job of its
        own (``reprocess-<key>``) with its own markers and ``run_id``, updating the rows in place.
    lease_s : lease of the catalog lock (s); a holder silent for longer is considered dead.
    lock_wait_s : wait up to this long for another live run to release the catalog (default: refuse at once).
    cluster_grace_s : the driver stops (blocks left are recorded as failed, the lock released) once the Dask
        scheduler has been unreachable, or no worker has been connected, for this many seconds; with
        ``cluster="slurm"`` the wait for the first worker (jobs in the queue) is not bounded by it.
    cluster_wait_s : wait up to this long for a scheduler file that does not exist yet.

    Returns
    -------
    RunSummary
        ``ok`` only when every block of the job has a done-marker that validates at the end of the run.

    Raises
    ------
    RunError, ClusterError, FingerprintMismatch, LockHeldError — before any block is computed (options are checked
    before any file is created).
    """
    from .clusters import cluster_device
    from ..model.checkpoint import load_model

    t_start = time.time()
    validate_options(cluster=cluster, workers=workers, mc_samples=mc_samples, block_objects=block_objects,
                     max_in_flight=max_in_flight, lease_s=lease_s, lock_wait_s=lock_wait_s, torch_threads=torch_threads,
                     pz_dtype=pz_dtype, device=device, cluster_grace_s=cluster_grace_s, cluster_wait_s=cluster_wait_s)
    input_store, cat_path = Path(input_store).absolute(), Path(output).absolute()
    try:
        attrs = validate_survey(input_store)
    except SurveyStoreError as exc:
        raise RunError(str(exc)) from exc
    n = int(attrs["n_objects"])
    mdl = load_model(model)
    import zarr

    g_in = zarr.open_group(str(input_store), mode="r", zarr_format=3, use_consolidated=False)
    if not mdl.instrument.matches(g_in["wave"][:]):
        raise RunError(f"input store {input_store} is on grid '{attrs.get('instrument')}' ({g_in['wave'].shape[0]} "
                       f"channels, hash {attrs.get('grid_hash')}) but model {mdl.path} expects '{mdl.instrument.name}' "
                       f"({mdl.instrument.n_wave} channels, hash {mdl.instrument.grid_hash}); refusing before any work")
    device = device or cluster_device(cluster, slurm_options)  # Slurm GPU jobs run the model on their GPU (issue 15)
    if objects:
        op = Path(objects)
        if not op.exists():
            raise RunError(f"--objects {objects}: file not found")
        selection_spec = f"objects=sha256:{hashlib.sha256(op.read_bytes()).hexdigest()[:16]}"
    else:
        selection_spec = chunks and f"chunks={chunks}" or where and f"where={where}" or ""
    exists = (cat_path / "zarr.json").exists()
    if selection_spec and not exists:
        raise RunError(f"--chunks/--objects/--where reprocess part of an existing catalog; {cat_path} does not exist")
    _check_output(cat_path)
    if client is None:
        from .clusters import looks_like_scheduler_file, wait_for_scheduler_file

        if looks_like_scheduler_file(cluster):  # a job script's scheduler may not have written it yet
            cluster = str(wait_for_scheduler_file(cluster, cluster_wait_s, print_fn))
    lock = LeaseLock(cat_path, lease_s=lease_s)
    min_epoch = 0
    if exists:  # epochs never go back, even if the lock file was lost
        try:
            min_epoch = max([int(r.get("epoch", 0)) for r in
                             zarr.open_group(str(cat_path), mode="r", zarr_format=3,
                                             use_consolidated=False).attrs.get("runs", [])], default=0)
        except Exception:  # noqa: BLE001 - not a catalog: refused below, under the lock
            pass
    epoch = lock.acquire(wait_s=lock_wait_s, min_epoch=min_epoch)
    run_rec: dict | None = None
    g_cat = None
    try:
        fault_point("lock-acquired", lock.path)
        if lock.taken_over_from:
            prev = lock.taken_over_from
            print_fn(f"took over the catalog lock from {prev.get('owner')} (epoch {prev.get('epoch')}, last "
                     f"heartbeat {time.time() - float(prev.get('heartbeat') or 0):.0f} s ago): that run is dead")
        created = False
        if not (cat_path / "zarr.json").exists():
            fp = numerics_fingerprint(mdl, mc_samples, seed, keep_pz, pz_dtype, device)
            bo = int(block_objects or default_block_objects(n, workers))
            if not block_objects and str(device).startswith("cuda"):  # blocks of whole GPU micro-batches (issue 15)
                from ..model.device import aligned
                from ..model.hotpath import pipeline_micro_batch

                bo = aligned(bo, pipeline_micro_batch(device))
            _create_in_place(cat_path, n_objects=n, z_centres=mdl.zgrid.centres, block_objects=bo,
                             passthrough=passthrough_columns(g_in), keep_pz=keep_pz, pz_dtype=pz_dtype, attrs={
                                 "title": "survey-infer catalog", "software_version": __version__,
                                 "model_sha256": mdl.sha256, "model_dir": str(mdl.path), "fingerprint": fp,
                                 "mc_samples": int(mc_samples), "seed": int(seed), "created": utc_now(),
                                 "input_store": str(input_store.resolve()), "input_n_objects": n,
                                 "block_objects": bo, "zwarn_bits": bit_table(mdl.calibration.get("thresholds")),
                                 "zwarn_bad_mask": int(BAD_MASK),
                                 "calibration": mdl.calibration, "runs": [], "provenance": provenance()})
            created = True
        g_cat = zarr.open_group(str(cat_path), mode="r+", zarr_format=3, use_consolidated=False)
        cattrs = dict(g_cat.attrs)
        if "block_objects" not in cattrs or "object_id" not in g_cat:
            raise RunError(f"--output {cat_path} is a Zarr group but not a survey-infer catalog")
        if layout_mismatch(cattrs):
            raise RunError(f"catalog {cat_path} was made by an older survey-infer whose zwarn bits mean other things "
                           f"({layout_mismatch(cattrs)}); it cannot be resumed or reprocessed: write a new catalog")
        bo = int(cattrs["block_objects"])
        base_fp = cattrs.get("fingerprint", {})
        if not created and (selection_spec or reprocess):
            # a reprocessing job writes into the catalog's layout (pz stored or not, its dtype)
            keep_pz = "pz" in g_cat
            pz_dtype = str(g_cat["pz"].dtype) if keep_pz else pz_dtype
        fp = numerics_fingerprint(mdl, mc_samples, seed, keep_pz, pz_dtype, device)
        if not created and fp != base_fp and not reprocess:
            diff = fingerprint_diff(base_fp, fp)
            raise FingerprintMismatch(
                f"catalog {cat_path} was made with different numerics:\n  " + "\n  ".join(diff) +
                "\nResume with the catalog's settings, or add --reprocess to recompute with the new ones as a job "
                "of its own (optionally only a subset: --chunks A:B, --objects FILE or --where EXPR).")
        n_cat = int(g_cat["object_id"].shape[0])
        if n < n_cat:
            raise RunError(f"input store {input_store} now has {n} rows but catalog {cat_path} has {n_cat}: rows were "
                           f"removed; write a new catalog")
        if n_cat != n:  # input was appended to: grow the catalog (new blocks appear, the last one is recomputed)
            if selection_spec:
                raise RunError(f"input store {input_store} has grown to {n} rows (catalog: {n_cat}); resume the main "
                               f"job first (the original command), then reprocess")
            for name in g_cat.array_keys():
                arr = g_cat[name]
                if arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "object":
                    arr.resize((n,) + arr.shape[1:])
            # (a consolidated copy in the root, as zarr.consolidate_metadata writes, still holds the old shapes: it
            # is never read here and is rewritten by the run-record update below, before any task starts)
            print_fn(f"input appended: catalog grown from {n_cat:,} to {n:,} rows")
            if new_cols := sorted(set(passthrough_columns(g_in)) - set(g_cat.array_keys())):  # added by an append
                print_fn(f"  input column(s) {', '.join(new_cols)} are newer than the catalog: not passed through")
        rows = _selection_rows(cat_path, n, bo, chunks, objects, where)
        spec = selection_spec or ("all" if fp != base_fp and not created else "")
        job, frozen = _job_for(cat_path, rows, fp, spec)
        if rows is not None and frozen is not None and not np.array_equal(rows, frozen):
            print_fn(f"job {job}: resuming with the selection frozen when it started ({len(frozen):,} rows; the "
                     f"expression now selects {len(rows):,})")
        rows = frozen
        runs = list(cattrs.get("runs", []))
        prior = [r for r in runs if r.get("job") == job and r.get("fingerprint") == fp]
        run_id = int(prior[-1]["run_id"]) if prior else (max([int(r["run_id"]) for r in runs], default=-1) + 1)
        bounds = block_bounds(n, bo)
        chunk_rows = _chunk_rows(input_store)
        if rows is not None:
            blk_of = rows // bo
            # a selection covering a whole block is computed as a whole-block write (no merge needed)
            todo_blocks = {int(b): (None if int((blk_of == b).sum()) == bounds[b][1] - bounds[b][0] else rows[blk_of == b])
                           for b in np.unique(blk_of)}
        else:
            todo_blocks = {i: None for i in range(len(bounds))}
        t_check = time.time()
        markers = load_markers(cat_path)
        run_ids = g_cat["run_id"][:] if n <= RUN_ID_IN_MEMORY else None  # else read per block

        def check(item):
            b, r = item
            lo, hi = bounds[b]
            return block_is_done(cat_path, job, b, lo, hi, fp, input_store, chunk_rows, rows=r, run_id=run_id,
                                 markers=markers, run_ids=run_ids)

        # verification is I/O and decompression (which release the GIL): a few threads
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
            verdicts = list(pool.map(check, todo_blocks.items()))
        pending, done_before, redo, not_ready = [], 0, [], []
        for (b, r), (ok, why) in zip(todo_blocks.items(), verdicts):
            lo, hi = bounds[b]
            if ok:
                done_before += 1
                continue
            if job != "main" and r is not None and not any(
                    _is_whole(jm[b]) and jm[b].get("lo") == lo and jm[b].get("hi") == hi
                    for jm in markers.values() if b in jm):
                not_ready.append(b)
                continue
            pending.append((b, lo, hi, r))
            if why != "no marker":
                redo.append((b, why))
        t_check = time.time() - t_check
        run_rec = {"run_id": run_id, "job": job, "selection": spec or "all", "n_selected": None if rows is None
                   else int(len(rows)), "fingerprint": fp, "model_dir": str(mdl.path), "model_sha256": mdl.sha256,
                   "epoch": epoch, "started": utc_now(), "started_unix": time.time(), "status": "running",
                   "command": provenance()["command"], "blocks_done_before": done_before,
                   "attempts": (prior[-1].get("attempts", []) if prior else [])[-50:]}
        _update_run_record(g_cat, run_rec)
        ctx = RunContext(catalog=str(cat_path.resolve()), input_store=str(input_store.resolve()), job=job, epoch=epoch,
                         run_id=run_id, fingerprint=fp, model_dir=str(mdl.path), model_sha256=mdl.sha256,
                         mc_samples=int(mc_samples), seed=int(seed), keep_pz=keep_pz,
                         passthrough=tuple(c for c in passthrough_columns(g_in) if c in g_cat),
                         chunk_rows=chunk_rows, device=device,
                         torch_threads=torch_threads, lock_owner=lock.owner, versions=software_versions())
        n_todo = sum((hi - lo) if r is None else len(r) for _, lo, hi, r in pending)
        print_fn(f"survey-infer run: {n:,} objects in {len(bounds)} blocks of {bo}; job {job} (run_id {run_id}, "
                 f"epoch {epoch}); {done_before} block(s) already done, {len(pending)} to compute ({n_todo:,} objects)"
                 f"; checked in {t_check:.1f} s")
        for b, why in redo[:20]:
            print_fn(f"  block {b} is recomputed: {why}")
        if len(redo) > 20:
            print_fn(f"  ... and {len(redo) - 20} more")
        summary = RunSummary(catalog=str(cat_path), job=job, run_id=run_id, epoch=epoch, n_objects=n,
                             n_blocks=len(todo_blocks), blocks_done_before=done_before, blocks_computed=0)
        results = [{"block": b, "ok": False, "reason": "not computed by the main job yet (or its marker is missing): "
                    "finish the main job (re-run the original command), then resume this job"} for b in not_ready]
        results += _execute(pending, ctx, cluster, workers, client, max_in_flight, progress, mdl, slurm_options or {},
                            summary, print_fn, lock, grace_s=cluster_grace_s)
        lost = lock.lost.is_set() or not lock.still_owner()
        if not lost:
            # completion is proven, not assumed: every block of the job must now have a done-marker of its own that
            # validates (a task result alone proves nothing: e.g. a key shared with another run's task)
            results = _final_check(results, todo_blocks, bounds, cat_path, job, fp, input_store, chunk_rows, run_id,
                                   n, g_cat, epoch)
            _record_failures(cat_path, job, epoch, [r for r in results if not r.get("ok")], lock)
        failed = sorted((r for r in results if not r.get("ok")), key=lambda r: r["block"])
        summary.blocks_failed = [{"block": r["block"], "reason": r["reason"]} for r in failed]
        summary.blocks_computed = len(results) - len(failed)
        fl = np.zeros(NBITS, np.int64)
        for r in results:
            if r.get("ok"):
                fl += np.asarray(r["zwarn"], np.int64)
                summary.n_reliable += r["n_reliable"]
                for k, v in r["timings"].items():
                    summary.timings[k] = summary.timings.get(k, 0.0) + v
                summary.worker_max_rss_mb = max(summary.worker_max_rss_mb, float(r.get("max_rss_mb", 0.0)))
        summary.flag_counts = {b.name: int(fl[b.bit]) for b in ZWARN_BITS if b.used}
        summary.seconds = time.time() - t_start
        summary.spectra_per_s = n_todo / summary.seconds if summary.seconds > 0 else 0.0
        lost = lost or lock.lost.is_set() or not lock.still_owner()
        run_rec["attempts"] = run_rec["attempts"] + [{
            "epoch": epoch, "started": run_rec["started"], "seconds": round(summary.seconds, 3),
            "blocks_done_before": done_before, "blocks_computed": summary.blocks_computed,
            "blocks_failed": len(summary.blocks_failed)}]
        run_rec.update({"finished": utc_now(), "status": "lost-lock" if lost else "stopped" if summary.stopped else
                        ("complete" if summary.ok else "incomplete"), "blocks_computed": summary.blocks_computed,
                        "blocks_failed": summary.blocks_failed[:100], "seconds": round(summary.seconds, 3)})
        if summary.stopped:
            run_rec["reason"] = summary.stopped
        if not lost:
            fault_point("run-record", cat_path / "zarr.json")
            _update_run_record(g_cat, run_rec)
        return summary
    except BaseException as exc:
        if run_rec is not None and run_rec.get("status") == "running" and g_cat is not None:
            try:
                if lock.still_owner():
                    run_rec.update({"status": "interrupted", "finished": utc_now()})
                    _update_run_record(g_cat, run_rec)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass
        msg = storage_message(exc, "", cat_path) if isinstance(exc, Exception) else None
        if msg:  # a full / read-only / over-quota file system: one line, not a traceback
            raise CatalogStorageError(msg) from exc
        raise
    finally:
        if not lock.release() and lock.release_error:
            print_fn(f"warning: {lock.release_error}")


def _marker_problem(cat_path: Path, job: str, block: int, lo: int, hi: int, fingerprint: dict, epoch: int,
                    run_id: int, rows: np.ndarray | None) -> str | None:
    """Why the done-marker a task of this run (``epoch``) should just have written does not prove its block done;
    None when it does."""
    m = read_json(marker_path(cat_path, job, block))
    if not m:
        return "its done-marker is missing from the catalog"
    if int(m.get("epoch", -1)) != int(epoch) or int(m.get("run_id", -1)) != int(run_id):
        return (f"its done-marker is from another run (epoch {m.get('epoch')}, run_id {m.get('run_id')}; this run: "
                f"epoch {epoch}, run_id {run_id})")
    if m.get("lo") != lo or m.get("hi") != hi or m.get("fingerprint") != fingerprint or m.get("rows_hash") != rows_hash(rows):
        return "its done-marker is for other rows or numerics"
    return None


def _final_check(results: list[dict], todo_blocks: dict, bounds, cat_path: Path, job: str, fp: dict,
                 input_store: Path, chunk_rows: dict, run_id: int, n: int, g_cat, epoch: int) -> list[dict]:
    """End-of-run check: a block is done only when its own done-marker validates (:func:`block_is_done`).

    * a block whose task reported success is checked without re-reading its output (the task hashed it as
      stored); if its marker does not validate it becomes a failure naming the reason;
    * a block the driver could not confirm (its task or its result was lost with a worker or the scheduler) is
      done after all when this run's marker of it validates in full (output re-read): the work was done;
    * a block failed for a reason the task itself returned stays failed.
    """
    markers = load_markers(cat_path)
    run_ids = g_cat["run_id"][:] if n <= RUN_ID_IN_MEMORY else None
    ok_recs = {r["block"]: r for r in results if r.get("ok")}
    bad_recs = {r["block"]: r for r in results if not r.get("ok")}
    out = []
    for b, r in todo_blocks.items():
        lo, hi = bounds[b]
        rec = bad_recs.get(b)
        if rec is not None:
            m = markers.get(job, {}).get(b) or {}
            unconfirmed = "lo" not in rec and int(m.get("epoch", -1)) == int(epoch) and not rec.get("stale")
            if unconfirmed and block_is_done(cat_path, job, b, lo, hi, fp, input_store, chunk_rows, rows=r,
                                             run_id=run_id, markers=markers, run_ids=run_ids)[0]:
                out.append({"block": b, "ok": True, "n": int(m.get("n_rows", hi - lo)), "zwarn": [0],
                            "n_reliable": 0, "timings": {}, "confirmed_by_marker": True})
            else:
                out.append(rec)
            continue
        good, why = block_is_done(cat_path, job, b, lo, hi, fp, input_store, chunk_rows, verify_output=False, rows=r,
                                  run_id=run_id, markers=markers, run_ids=run_ids)
        if good:
            if b in ok_recs:
                out.append(ok_recs[b])
            continue
        out.append({"block": b, "ok": False, "reason": f"end-of-run check: the block is not done ({why})"
                    + ("; its task had reported success" if b in ok_recs else "")})
    out += [rec for b, rec in bad_recs.items() if b not in todo_blocks]
    return out


def _record_failures(cat_path: Path, job: str, epoch: int, failed: list[dict], lock: LeaseLock) -> None:
    """Record every failure the driver saw under ``_failures/<job>/`` (so ``status`` shows it with its reason),
    unless the run no longer owns the catalog."""
    if not failed or not lock.still_owner():
        return
    for r in failed:
        if "block" not in r:
            continue
        try:
            atomic_write_json(failure_path(cat_path, job, int(r["block"])),
                              {"block": int(r["block"]), "ok": False, "reason": r.get("reason"), "epoch": epoch,
                               "job": job, "time": time.time(), "seen_by": "driver"})
        except OSError:
            pass


def _run_with_retries(b: int, lo: int, hi: int, ctx: RunContext, r) -> dict:
    """In-process execution of one block with the retries Dask gives a task (``retries=TRANSIENT_RETRIES``):
    only a :class:`~survey_infer.pipeline.faults.TransientIOError` (an NFS hiccup) is retried."""
    for _attempt in range(TRANSIENT_RETRIES + 1):
        try:
            return process_block(b, lo, hi, ctx, r)
        except TransientIOError as exc:
            last = exc
    return {"block": b, "ok": False, "reason": f"{type(last).__name__}: {last} (still failing after "
            f"{TRANSIENT_RETRIES} retries)"}


def _execute(pending, ctx: RunContext, cluster: str, workers: int, client, max_in_flight, progress, mdl,
             slurm_options, summary: RunSummary, print_fn, lock: LeaseLock | None = None,
             grace_s: float = 60.0) -> list[dict]:
    """Run the block tasks (bounded number in flight) and collect their status records.

    Stops submitting when the run loses the catalog lock (a newer run took it over after this one was silent
    for longer than the lease); the blocks not run are reported failed with that reason.

    Task keys carry a token unique to this run (``block-<job>-<block>-e<epoch>-<token>``): distributed identifies
    a task by its key alone, so two runs on one shared scheduler must never share a key (distributed#8185). A
    block counts as computed only when the task reported success *and* its own done-marker (this run's epoch and
    run id) is in the catalog.

    The wait for results is never unbounded: the cluster is checked every second; when the scheduler has been
    unreachable (or the client closed), or no worker has been connected, for ``grace_s`` seconds, the driver
    stops: it cancels what is in flight, reports the blocks not done as failed with the reason, and sets
    ``summary.stopped`` (with ``cluster="slurm"`` the wait for the first worker is not bounded: jobs queue).
    While this loop runs the lock's heartbeat depends on it making progress (a hung driver lets its lease
    expire).
    """
    from tqdm import tqdm

    total = sum((hi - lo) if r is None else len(r) for _, lo, hi, r in pending)
    bar = tqdm(total=total, unit="spec", desc="run", disable=not progress, smoothing=0)  # one rate: the mean
    results: list[dict] = []

    def done(rec):
        fault_point("block-done")
        results.append(rec)
        if rec.get("ok"):
            bar.update(rec["n"])
        else:
            bar.write(f"block {rec['block']} failed: {rec['reason']}")

    def lost() -> bool:
        return lock is not None and (lock.lost.is_set() or bool(results and results[-1].get("stale"))
                                     or not lock.still_owner())

    def not_run(blocks) -> None:
        cur = read_json(Path(ctx.catalog) / LOCK) or {}
        for b in blocks:
            results.append({"block": b, "ok": False, "reason": f"not run: this run (epoch {ctx.epoch}) lost the "
                            f"catalog lock to {cur.get('owner')} (epoch {cur.get('epoch')})"})

    if not pending:
        bar.close()
        return results
    if cluster == "inprocess":
        from .worker import _set_threads

        _set_threads(ctx.torch_threads)
        for i, (b, lo, hi, r) in enumerate(pending):
            if lost():
                not_run([p[0] for p in pending[i:]])
                break
            done(_run_with_retries(b, lo, hi, ctx, r))
        bar.close()
        return results
    from distributed import as_completed

    from .clusters import describe_dask_error, start_client

    own = None
    own_client = client is None
    if client is None:
        client, own = start_client(cluster, workers, slurm_options=slurm_options)
    last_tick = [time.monotonic()]
    stall_s = max(3 * (lock.lease_s if lock else 60.0), 2 * grace_s)

    def tick() -> None:
        last_tick[0] = time.monotonic()

    if lock is not None:
        lock.alive_check = lambda: time.monotonic() - last_tick[0] < stall_s
    token = uuid.uuid4().hex[:10]
    cat_path = Path(ctx.catalog)
    in_flight: dict[str, tuple] = {}
    queue = list(pending)
    health = None
    try:
        health = _ClusterHealth(client, grace_s, wait_first_worker=cluster == "slurm")
        summary.dashboard = client.dashboard_link
        print_fn(f"dashboard: {client.dashboard_link}")
        _register_model_plugin(client, ctx, grace_s, print_fn)
        tick()
        try:
            n_workers = int(client.scheduler_info(n_workers=1).get("n_workers", 0)) or workers
        except Exception:  # noqa: BLE001 - judged by the health check below
            n_workers = workers
        try:  # two tasks in flight per worker thread (a GPU worker runs several threads; issue 15)
            n_threads = sum(int(w.get("nthreads", 1)) for w in client.scheduler_info(n_workers=-1)["workers"].values())
        except Exception:  # noqa: BLE001
            n_threads = n_workers
        limit = max_in_flight or max(2, 2 * max(1, n_workers), 2 * n_threads)
        futs = as_completed()

        def submit_next():
            b, lo, hi, r = queue.pop(0)
            f = client.submit(process_block, b, lo, hi, ctx, r, key=f"block-{ctx.job}-{b}-e{ctx.epoch}-{token}",
                              pure=False, retries=TRANSIENT_RETRIES)  # retries: transient OSErrors (NFS hiccups)
            in_flight[f.key] = (f, b, lo, hi, r)
            futs.add(f)

        retries: dict[int, int] = {}
        stop_reason = None
        while queue or in_flight:
            tick()
            if health.client_ok():
                try:
                    while queue and len(in_flight) < limit:
                        submit_next()
                except Exception as exc:  # noqa: BLE001 - the client closed between the check and the submit
                    health.note(describe_dask_error(exc))
            batch = futs.next_batch(block=False) if futs.has_ready() else []
            if not batch:
                time.sleep(0.1)
            for fut in batch:
                item = in_flight.pop(fut.key, None)
                if item is None:
                    continue
                _, b, lo, hi, r = item
                rec = None
                try:
                    if fut.status == "cancelled" or not health.client_ok():
                        raise _Retry
                    rec = fut.result(timeout=5)  # a result held by a worker that just died can hang the gather
                except _Retry:
                    pass
                except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError, a cancelled future, ...
                    if health.is_connection_error(exc):
                        health.note(describe_dask_error(exc))
                    else:
                        rec = {"block": b, "ok": False, "reason": describe_dask_error(exc) + (
                            f" (still failing after {TRANSIENT_RETRIES} retries)"
                            if isinstance(exc, TransientIOError) else "")}
                        heard = health.heard.text() if type(exc).__name__ == "KilledWorker" else None
                        if heard:
                            rec["reason"] += f"; last cluster message: {heard}"
                if rec is None and not _marker_problem(cat_path, ctx.job, b, lo, hi, ctx.fingerprint, ctx.epoch,
                                                       ctx.run_id, r):
                    # the result was lost (with its worker or the scheduler connection) but the block's own marker
                    # from this run proves it done
                    rec = {"block": b, "ok": True, "n": (hi - lo) if r is None else len(r), "zwarn": [0],
                           "n_reliable": 0, "timings": {}, "confirmed_by_marker": True}
                if rec is None:  # lost with the scheduler connection: run it again if the cluster comes back
                    retries[b] = retries.get(b, 0) + 1
                    if retries[b] <= 3:
                        queue.insert(0, (b, lo, hi, r))
                        continue
                    rec = {"block": b, "ok": False, "reason": "cancelled by Dask 3 times (scheduler connection lost "
                           "or the task cancelled)" + (f": {health.last_error}" if health.last_error else "")}
                if rec.get("ok"):
                    why = _marker_problem(cat_path, ctx.job, b, lo, hi, ctx.fingerprint, ctx.epoch, ctx.run_id, r)
                    if why:
                        rec = {"block": b, "ok": False, "reason": f"the task reported success but {why}"}
                done(rec)
                try:
                    fut.release()
                except Exception:  # noqa: BLE001
                    pass
                if lost():
                    rest = [v[1] for v in in_flight.values()] + [q[0] for q in queue]
                    _cancel(client, [v[0] for v in in_flight.values()])
                    in_flight.clear()
                    queue.clear()
                    not_run(sorted(rest))
                    print_fn(f"this run lost the catalog lock: stopped; {len(rest)} block(s) left to the run that "
                             f"holds it")
                    break
            if queue or in_flight:
                stop_reason = health.check()
                if stop_reason:
                    break
        if stop_reason:
            rest = sorted([v[1] for v in in_flight.values()] + [q[0] for q in queue])
            _cancel(client, [v[0] for v in in_flight.values()])
            summary.stopped = stop_reason
            bar.write(f"stopped: {stop_reason}")
            for b in rest:
                results.append({"block": b, "ok": False, "reason": f"not run: {stop_reason}"})
    finally:
        if lock is not None:
            lock.alive_check = None
        if health is not None:
            health.close()
        bar.close()
        if own_client:
            _close_quietly(client, own)
    return results


class _Retry(Exception):
    """A task result lost with the scheduler connection (not a failure of the block)."""


class _ClusterHealth:
    """Is the driver's Dask cluster still there? (scheduler reachable, at least one worker)."""

    def __init__(self, client, grace_s: float, wait_first_worker: bool = False):
        self.client = client
        self.grace_s = float(grace_s)
        self.wait_first_worker = wait_first_worker
        self.address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
        self.unreachable_since: float | None = None
        self.no_worker_since: float | None = None
        self.seen_worker = False
        self.last_error: str | None = None
        self.next_check = 0.0
        self.heard = _LastClusterMessage()

    def close(self) -> None:
        self.heard.detach()

    def client_ok(self) -> bool:
        return self.client.status == "running"

    @staticmethod
    def is_connection_error(exc: BaseException) -> bool:
        from distributed.client import FutureCancelledError

        name = type(exc).__name__
        return isinstance(exc, (OSError, FutureCancelledError)) or name in (
            "CommClosedError", "StreamClosedError", "ClosedClientError", "CancelledError")

    def note(self, what: str) -> None:
        self.last_error = what

    def check(self) -> str | None:
        """A reason to stop, or None; looks at the cluster at most once a second."""
        now = time.monotonic()
        if now < self.next_check:
            return None
        self.next_check = now + 1.0
        st = self.client.status
        if st in ("closed", "closing", "failed"):
            return (f"the Dask scheduler at {self.address} is gone: the client lost its connection and closed"
                    + (f" ({self.last_error})" if self.last_error else ""))
        if st != "running":
            self.unreachable_since = self.unreachable_since or now
        else:
            try:
                info = self.client.scheduler_info(n_workers=1)
                self.unreachable_since = None
                nw = int(info.get("n_workers", len(info.get("workers", {}))))
            except Exception as exc:  # noqa: BLE001
                self.unreachable_since = self.unreachable_since or now
                self.last_error = " ".join(str(exc).split())[:160] or type(exc).__name__
                nw = None
            if nw == 0:
                if self.seen_worker or not self.wait_first_worker:
                    self.no_worker_since = self.no_worker_since or now
            elif nw:
                self.seen_worker = True
                self.no_worker_since = None
        if self.unreachable_since is not None and now - self.unreachable_since >= self.grace_s:
            return f"the Dask scheduler at {self.address} has been unreachable for {self.grace_s:g} s"
        if self.no_worker_since is not None and now - self.no_worker_since >= self.grace_s:
            heard = self.heard.text()
            return (f"no Dask worker connected to the scheduler at {self.address} for {self.grace_s:g} s (workers "
                    f"that retired at their lifetime, were killed for memory, or whose jobs ended are not replaced)"
                    + (f"; last cluster message: {heard}" if heard else ""))
        return None


class _LastClusterMessage(logging.Handler):
    """Keeps the last warning of distributed's nannies and workers in this process (a local cluster's nannies
    live in the driver), e.g. "Worker ... exceeded 95% memory budget. Restarting...", to name a cause."""

    NAMES = ("distributed.nanny", "distributed.worker")

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.last: str | None = None
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = " ".join(record.getMessage().split())
        except Exception:  # noqa: BLE001
            return
        if "Restarting worker" not in msg and "still alive" not in msg:
            self.last = msg[:200]

    def text(self) -> str | None:
        return self.last

    def detach(self) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)


def _register_model_plugin(client, ctx: RunContext, wait_s: float, print_fn) -> None:
    """Register the model-loading plugin (every current and future worker loads the model once).

    The call waits for the current workers' set-up; a worker that dies meanwhile (e.g. killed by its memory limit
    while loading) or a set-up slower than ``wait_s`` does not stop the run (the scheduler keeps the plugin for
    workers that start later, and a task loads the model itself if needed). An error raised by the plugin's
    set-up (different software or an unreadable model on a worker) is the user's to fix.

    Raises
    ------
    ClusterError
        The plugin's set-up failed on a worker (one line).
    """
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutTimeout

    from ..errors import ClusterError
    from .clusters import describe_dask_error

    plugin = ModelPlugin(ctx.model_dir, ctx.model_sha256, software_versions(), ctx.device, ctx.torch_threads)
    pool = ThreadPoolExecutor(max_workers=1)
    fut = pool.submit(client.register_plugin, plugin, name=f"survey-infer-model-{ctx.model_sha256[:12]}")
    try:
        fut.result(timeout=wait_s)
    except FutTimeout:
        print_fn(f"note: the workers had not loaded the model after {wait_s:g} s; going on (tasks wait for them)")
    except Exception as exc:  # noqa: BLE001
        if _ClusterHealth.is_connection_error(exc) or type(exc).__name__ == "KilledWorker":
            print_fn(f"note: a worker was lost while loading the model ({describe_dask_error(exc)}); going on")
        else:
            raise ClusterError(f"a Dask worker could not set up the model: {describe_dask_error(exc)}") from exc
    finally:
        pool.shutdown(wait=False)


def _cancel(client, futures: list) -> None:
    if not futures:
        return
    try:
        if client.status == "running":
            client.cancel(futures)
    except Exception:  # noqa: BLE001 - the cluster may be gone
        pass


def _close_quietly(client, own) -> None:
    """Close the client (and the cluster this run started) without hanging on a dead scheduler."""
    for obj in (client, own) if own is not None else (client,):
        try:
            if obj is client:
                client.close(timeout=10)
            else:
                obj.close(timeout=30)
        except Exception:  # noqa: BLE001 - best effort: the scheduler may be gone
            pass
