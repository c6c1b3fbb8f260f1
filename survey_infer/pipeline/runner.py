"""The driver of ``survey-infer run``: validate, create or resume the catalog, then plan → execute → record.

One Dask task = one block of objects = one aligned region of the catalog (see :mod:`survey_infer.catalog.store`);
the task returns a small status record. Partial reprocessing (a block range, an object list, a selection on the
catalog) is a job of its own with its own markers and ``run_id``, updating the catalog in place;
``attrs["runs"]`` keeps the history and every row's ``run_id`` says which run wrote it.

:mod:`.plan` decides what to compute (job, run id, pending blocks with reasons), :mod:`.execute` runs the block
tasks (:mod:`.worker`) on the cluster (:mod:`.clusters`), :mod:`.record` proves and records the outcome; this
module opens the input and the model, holds the catalog's lock (:mod:`.lock`) and creates or opens the catalog.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..catalog.schema import PASSTHROUGH, PER_OBJECT
from ..catalog.store import array_names, create_catalog, passthrough_columns
from ..errors import CatalogStorageError, ClusterError, FingerprintMismatch, RunError, SurveyStoreError
from ..flags import BAD_MASK, bit_table, layout_mismatch
from ..io.survey_store import validate_survey
from ..provenance import provenance, software_versions, utc_now
from .execute import TRANSIENT_RETRIES, execute_blocks  # noqa: F401  (TRANSIENT_RETRIES: the tasks' retries)
from .faults import fault_point, storage_message
from .plan import (JOBS, Plan, default_block_objects, numerics_fingerprint, plan_run, selection_rows, selection_spec,
                   validate_options)
from .record import finish_run, mark_interrupted, start_record
from .resume import FAILURES, LOCK, LOCK_DIR, MARKERS, LeaseLock, fingerprint_diff
from .summary import RunSummary
from .worker import RunContext


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

    t_start = time.time()
    validate_options(cluster=cluster, workers=workers, mc_samples=mc_samples, block_objects=block_objects,
                     max_in_flight=max_in_flight, lease_s=lease_s, lock_wait_s=lock_wait_s, torch_threads=torch_threads,
                     pz_dtype=pz_dtype, device=device, cluster_grace_s=cluster_grace_s, cluster_wait_s=cluster_wait_s)
    inp = _open_input(input_store, model)
    cat_path = Path(output).absolute()
    device = device or cluster_device(cluster, slurm_options)  # Slurm GPU jobs run the model on their GPU (issue 15)
    spec = selection_spec(chunks, objects, where)
    exists = (cat_path / "zarr.json").exists()
    if spec and not exists:
        raise RunError(f"--chunks/--objects/--where reprocess part of an existing catalog; {cat_path} does not exist")
    _check_output(cat_path)
    if client is None:
        from .clusters import looks_like_scheduler_file, wait_for_scheduler_file

        if looks_like_scheduler_file(cluster):  # a job script's scheduler may not have written it yet
            cluster = str(wait_for_scheduler_file(cluster, cluster_wait_s, print_fn))
    own_client, own_cluster = False, None
    if str(device).startswith("cuda") and client is None and cluster != "inprocess":
        # the GPU fingerprint is the workers' (issue 15): the cluster starts before the catalog is opened
        from .clusters import start_client

        client, own_cluster = start_client(cluster, workers, slurm_options=slurm_options)
        own_client = True
    try:
        gpu = _gpu_fingerprint(device, client, cluster, cluster_grace_s)
        lock = LeaseLock(cat_path, lease_s=lease_s)
        epoch = lock.acquire(wait_s=lock_wait_s, min_epoch=_min_epoch(cat_path) if exists else 0)
        holder: dict = {}  # the catalog group and run record, once there (to mark an interrupted run)
        try:
            fault_point("lock-acquired", lock.path)
            if lock.taken_over_from:
                prev = lock.taken_over_from
                print_fn(f"took over the catalog lock from {prev.get('owner')} (epoch {prev.get('epoch')}, last "
                         f"heartbeat {time.time() - float(prev.get('heartbeat') or 0):.0f} s ago): that run is dead")
            return _plan_execute_record(
                cat_path, inp, lock, epoch, spec, t_start=t_start, holder=holder, numerics=dict(
                    mc_samples=mc_samples, seed=seed, keep_pz=keep_pz, pz_dtype=pz_dtype, device=device, gpu=gpu),
                block_objects=block_objects, workers=workers, reprocess=reprocess, selection=(chunks, objects, where),
                run=dict(cluster=cluster, workers=workers, client=client, max_in_flight=max_in_flight,
                         progress=progress, slurm_options=slurm_options or {}, print_fn=print_fn,
                         grace_s=cluster_grace_s),
                torch_threads=torch_threads, print_fn=print_fn)
        except BaseException as exc:
            mark_interrupted(holder.get("g_cat"), holder.get("run_rec"), lock)
            msg = storage_message(exc, "", cat_path) if isinstance(exc, Exception) else None
            if msg:  # a full / read-only / over-quota file system: one line, not a traceback
                raise CatalogStorageError(msg) from exc
            raise
        finally:
            if not lock.release() and lock.release_error:
                print_fn(f"warning: {lock.release_error}")
    finally:
        if own_client:
            from .execute import close_client

            close_client(client, own_cluster)


def _plan_execute_record(cat_path: Path, inp: "_Input", lock: LeaseLock, epoch: int, spec: str, *, t_start: float,
                         holder: dict, numerics: dict, block_objects: int | None, workers: int, reprocess: bool,
                         selection: tuple, run: dict, torch_threads: int, print_fn) -> RunSummary:
    """The part of :func:`run_catalog` done under the catalog's lock: open or create the catalog, plan the job,
    record its start, execute the pending blocks, prove and record the outcome.

    ``numerics``: :func:`~survey_infer.pipeline.plan.numerics_fingerprint`'s keywords; ``selection``: (chunks,
    objects, where); ``run``: :func:`~survey_infer.pipeline.execute.execute_blocks`'s keywords; ``holder`` receives
    the catalog group and the run record (for the caller to mark an interrupted run).
    """
    g_cat, fp, created = _open_catalog(cat_path, inp, numerics, block_objects=block_objects, workers=workers,
                                       reprocess=reprocess, selecting=bool(spec), print_fn=print_fn)
    holder["g_cat"] = g_cat
    rows = selection_rows(cat_path, inp.n, int(g_cat.attrs["block_objects"]), *selection)
    base_fp = dict(g_cat.attrs).get("fingerprint", {})
    plan = plan_run(cat_path, g_cat, inp.path, fp, spec or ("all" if fp != base_fp and not created else ""),
                    rows)
    holder["run_rec"] = run_rec = start_record(g_cat, plan, fp, inp.model, epoch)
    ctx = RunContext(catalog=str(cat_path.resolve()), input_store=str(inp.path.resolve()), job=plan.job,
                     epoch=epoch, run_id=plan.run_id, fingerprint=fp, model_dir=str(inp.model.path),
                     model_sha256=inp.model.sha256, mc_samples=int(numerics["mc_samples"]), seed=int(numerics["seed"]),
                     keep_pz=fp["dtypes"]["pz"] is not None,
                     passthrough=tuple(c for c in inp.passthrough if c in g_cat),
                     chunk_rows=plan.chunk_rows, device=numerics["device"], torch_threads=torch_threads,
                     lock_owner=lock.owner, versions=software_versions())
    _print_plan(plan, inp.n, int(g_cat.attrs["block_objects"]), epoch, print_fn)
    summary = RunSummary(catalog=str(cat_path), job=plan.job, run_id=plan.run_id, epoch=epoch, n_objects=inp.n,
                         n_blocks=len(plan.blocks), blocks_done_before=plan.done_before, blocks_computed=0)
    results = [{"block": b, "ok": False, "reason": "not computed by the main job yet (or its marker is "
                "missing): finish the main job (re-run the original command), then resume this job"}
               for b in plan.not_ready]
    results += execute_blocks(plan.pending, ctx, summary=summary, lock=lock, **run)
    finish_run(g_cat, run_rec, summary, results, plan, cat_path=cat_path, input_store=inp.path,
               fingerprint=fp, epoch=epoch, lock=lock, t_start=t_start)
    return summary


@dataclass
class _Input:
    """The survey store and the model of a run, opened and checked against each other."""

    path: Path
    attrs: dict
    n: int
    model: object
    group: object
    passthrough: dict  # input column -> dtype, passed through to the catalog


def _open_input(input_store: str | Path, model: str | Path) -> _Input:
    """Open and validate the survey store, load the model, and refuse a store on another wavelength grid.

    Raises
    ------
    RunError
        The store is not a valid survey store, or its grid is not the model's.
    CheckpointError
        The model cannot be loaded.
    """
    import zarr

    from ..model.checkpoint import load_model

    path = Path(input_store).absolute()
    try:
        attrs = validate_survey(path)
    except SurveyStoreError as exc:
        raise RunError(str(exc)) from exc
    mdl = load_model(model)
    g_in = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    if not mdl.instrument.matches(g_in["wave"][:]):
        raise RunError(f"input store {path} is on grid '{attrs.get('instrument')}' ({g_in['wave'].shape[0]} "
                       f"channels, hash {attrs.get('grid_hash')}) but model {mdl.path} expects '{mdl.instrument.name}' "
                       f"({mdl.instrument.n_wave} channels, hash {mdl.instrument.grid_hash}); refusing before any work")
    return _Input(path=path, attrs=attrs, n=int(attrs["n_objects"]), model=mdl, group=g_in,
                  passthrough=passthrough_columns(g_in))


def _gpu_fingerprint(device: str, client, cluster: str, wait_s: float) -> dict:
    """The GPU part of the fingerprint (issue 15), taken from the workers that will run the model
    (:func:`survey_infer.model.device.gpu_fingerprint` on each, merged; mixed GPUs refused); in this process for
    ``cluster="inprocess"``; ``{}`` on the CPU (CPU fingerprints keep their keys).

    Raises
    ------
    ClusterError
        No worker joined within ``wait_s`` seconds (Slurm: no bound, jobs queue), a worker sees no GPU, or the
        workers' GPUs or software differ.
    """
    if not str(device).startswith("cuda"):
        return {}
    from ..model.device import gpu_fingerprint, merge_worker_fingerprints

    if client is None:
        return gpu_fingerprint(device)
    from .clusters import describe_dask_error

    try:
        client.wait_for_workers(1, timeout=None if cluster == "slurm" else wait_s)
        answers = client.run(gpu_fingerprint, device)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"--cluster {cluster}: no worker answered for the GPU fingerprint: "
                           f"{describe_dask_error(exc)}") from exc
    return merge_worker_fingerprints(answers)


def _min_epoch(cat_path: Path) -> int:
    """The highest run epoch recorded in a catalog: epochs never go back, even if the lock file was lost."""
    import zarr

    try:
        runs = zarr.open_group(str(cat_path), mode="r", zarr_format=3, use_consolidated=False).attrs.get("runs", [])
        return max([int(r.get("epoch", 0)) for r in runs], default=0)
    except Exception:  # noqa: BLE001 - not a catalog: refused later, under the lock
        return 0


def _open_catalog(cat_path: Path, inp: _Input, numerics: dict, *, block_objects: int | None, workers: int,
                  reprocess: bool, selecting: bool, print_fn):
    """Create the catalog (under the lock) or open it, compare fingerprints and grow it to an appended input.

    Parameters
    ----------
    numerics : :func:`~survey_infer.pipeline.plan.numerics_fingerprint`'s keywords asked for (``keep_pz`` and
        ``pz_dtype`` give way to an existing catalog's layout for a reprocessing job).
    selecting : the run reprocesses a selection (``--chunks/--objects/--where``).

    Returns
    -------
    (group, fingerprint, created)
        The catalog's Zarr group (writable), this run's fingerprint, and whether the catalog was created now.

    Raises
    ------
    RunError
        Not a catalog, a catalog of an older zwarn layout, rows removed from the input, or an input appended
        to while a selection is reprocessed.
    FingerprintMismatch
        Other numerics than the catalog's without ``reprocess``.
    """
    import zarr

    mdl = inp.model
    created = False
    if not (cat_path / "zarr.json").exists():
        _create(cat_path, inp, numerics, block_objects, workers)
        created = True
    g_cat = zarr.open_group(str(cat_path), mode="r+", zarr_format=3, use_consolidated=False)
    cattrs = dict(g_cat.attrs)
    if "block_objects" not in cattrs or "object_id" not in g_cat:
        raise RunError(f"--output {cat_path} is a Zarr group but not a survey-infer catalog")
    if layout_mismatch(cattrs):
        raise RunError(f"catalog {cat_path} was made by an older survey-infer whose zwarn bits mean other things "
                       f"({layout_mismatch(cattrs)}); it cannot be resumed or reprocessed: write a new catalog")
    base_fp = cattrs.get("fingerprint", {})
    numerics = dict(numerics)
    if not created and (selecting or reprocess):
        # a reprocessing job writes into the catalog's layout (pz stored or not, its dtype)
        numerics["keep_pz"] = "pz" in g_cat
        numerics["pz_dtype"] = str(g_cat["pz"].dtype) if numerics["keep_pz"] else numerics["pz_dtype"]
    fp = numerics_fingerprint(mdl, **numerics)
    if not created and fp != base_fp and not reprocess:
        raise FingerprintMismatch(
            f"catalog {cat_path} was made with different numerics:\n  " + "\n  ".join(fingerprint_diff(base_fp, fp)) +
            "\nResume with the catalog's settings, or add --reprocess to recompute with the new ones as a job "
            "of its own (optionally only a subset: --chunks A:B, --objects FILE or --where EXPR).")
    _grow(g_cat, cat_path, inp, selecting, print_fn)
    return g_cat, fp, created


def _create(cat_path: Path, inp: _Input, numerics: dict, block_objects: int | None, workers: int) -> None:
    """Create the catalog template for this input and model (blocks of whole GPU micro-batches on a GPU)."""
    mdl, n, device = inp.model, inp.n, numerics["device"]
    fp = numerics_fingerprint(mdl, **numerics)
    bo = int(block_objects or default_block_objects(n, workers))
    if not block_objects and str(device).startswith("cuda"):  # blocks of whole GPU micro-batches (issue 15)
        from ..model.device import aligned
        from ..model.hotpath import pipeline_micro_batch

        bo = aligned(bo, int((numerics.get("gpu") or {}).get("micro_batch") or pipeline_micro_batch(device)))
    _create_in_place(cat_path, n_objects=n, z_centres=mdl.zgrid.centres, block_objects=bo,
                     passthrough=inp.passthrough, keep_pz=numerics["keep_pz"], pz_dtype=numerics["pz_dtype"],
                     attrs={"title": "survey-infer catalog", "software_version": __version__,
                            "model_sha256": mdl.sha256, "model_dir": str(mdl.path), "fingerprint": fp,
                            "mc_samples": int(numerics["mc_samples"]), "seed": int(numerics["seed"]),
                            "created": utc_now(), "input_store": str(inp.path.resolve()), "input_n_objects": n,
                            "block_objects": bo, "zwarn_bits": bit_table(mdl.calibration.get("thresholds")),
                            "zwarn_bad_mask": int(BAD_MASK), "calibration": mdl.calibration, "runs": [],
                            "provenance": provenance()})


def _grow(g_cat, cat_path: Path, inp: _Input, selecting: bool, print_fn) -> None:
    """Input appended to: grow the catalog (new blocks appear, the last one is recomputed); rows removed: refuse."""
    n = inp.n
    n_cat = int(g_cat["object_id"].shape[0])
    if n < n_cat:
        raise RunError(f"input store {inp.path} now has {n} rows but catalog {cat_path} has {n_cat}: rows were "
                       f"removed; write a new catalog")
    if n_cat == n:
        return
    if selecting:
        raise RunError(f"input store {inp.path} has grown to {n} rows (catalog: {n_cat}); resume the main "
                       f"job first (the original command), then reprocess")
    for name in array_names(g_cat):
        arr = g_cat[name]
        if arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "object":
            arr.resize((n,) + arr.shape[1:])
    # (a consolidated copy in the root, as zarr.consolidate_metadata writes, still holds the old shapes: it
    # is never read here and is rewritten by the run-record update, before any task starts)
    print_fn(f"input appended: catalog grown from {n_cat:,} to {n:,} rows")
    if new_cols := sorted(set(inp.passthrough) - set(array_names(g_cat))):  # added by an append
        print_fn(f"  input column(s) {', '.join(new_cols)} are newer than the catalog: not passed through")


def _print_plan(plan: Plan, n: int, bo: int, epoch: int, print_fn) -> None:
    """The run's first lines: objects, blocks, job, run id, what is done and what is computed (and why)."""
    for note in plan.notes:
        print_fn(note)
    print_fn(f"survey-infer run: {n:,} objects in {len(plan.bounds)} blocks of {bo}; job {plan.job} (run_id "
             f"{plan.run_id}, epoch {epoch}); {plan.done_before} block(s) already done, {len(plan.pending)} to compute "
             f"({plan.n_todo:,} objects); checked in {plan.check_s:.1f} s")
    for b, why in plan.redo[:20]:
        print_fn(f"  block {b} is recomputed: {why}")
    if len(plan.redo) > 20:
        print_fn(f"  ... and {len(plan.redo) - 20} more")


# ---- the catalog folder ----------------------------------------------------------------------------------------
_OWN = {LOCK, LOCK + ".claim", LOCK_DIR, MARKERS, JOBS, FAILURES, "zarr.json", "pz", "z_grid", *PER_OBJECT,
        *PASSTHROUGH}


def _check_output(cat_path: Path) -> None:
    """Refuse an output path that exists and is not (the beginning of) a survey-infer catalog (:class:`RunError`)."""
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
