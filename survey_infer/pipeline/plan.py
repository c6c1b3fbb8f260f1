"""Planning a run, without computing anything: the options checked, the numerics fingerprint, the job (main or
reprocessing) and its run id, and which blocks are pending, each with the reason (no marker, input changed,
torn chunk, ...).

:func:`block_states` is the one verdict over a job's blocks: ``run`` (full check, :func:`~.resume.block_is_done`)
and ``status`` (trusting markers, or ``--verify``: the full check) both use it.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..catalog.store import block_bounds, open_catalog
from ..errors import RunError
from .resume import block_is_done, input_chunk_rows, load_markers

MAX_BLOCK = 32768
CHECK_THREADS = 4  # threads verifying done-markers when a run starts
RUN_ID_IN_MEMORY = 20_000_000  # catalogs up to this many rows have their run_id column read at once on resume
JOBS = "_jobs"


def default_block_objects(n: int, workers: int) -> int:
    """Block size: ≥ 4 blocks per worker for balance, multiples of 256, at most 32,768 (file count on cluster
    file systems: ~35 files per block → ≈1,000 files per million objects at the maximum)."""
    target = math.ceil(n / max(1, 4 * workers))
    return int(min(MAX_BLOCK, max(256, math.ceil(target / 256) * 256)))


def numerics_fingerprint(model, mc_samples: int, seed: int, keep_pz: bool, pz_dtype: str, device: str,
                         gpu: dict | None = None) -> dict:
    """The numerics fingerprint of a catalog: everything its bits depend on (a run with another fingerprint is
    refused on resume, or becomes a reprocessing job of its own).

    Parameters
    ----------
    model : the loaded model (:func:`survey_infer.model.checkpoint.load_model`).
    mc_samples, seed : MC-dropout samples T and seed.
    keep_pz, pz_dtype : whether the PDFs are stored, and their dtype.
    device : ``cpu`` or ``cuda[:N]``.
    gpu : on a GPU, the workers' :func:`survey_infer.model.device.gpu_fingerprint` (micro-batch size, fp32
        precision, GPU name, compute capability, SM count, CUDA, cuDNN; issue 15). Nothing on the CPU, whose
        fingerprint keeps its keys (existing CPU catalogs resume).

    Returns
    -------
    dict
        JSON-serialisable; stored in the catalog's ``attrs["fingerprint"]`` and in every done-marker.
    """
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
        **((gpu or {}) if str(device).startswith("cuda") else {}),
    }


def selection_rows(cat_path: Path, n: int, block_objects: int, chunks: str | None, objects: str | None,
                    where: str | None) -> np.ndarray | None:
    """Rows selected by --chunks A:B, --objects FILE or --where EXPR.

    Returns
    -------
    numpy.ndarray or None
        Sorted row numbers (int64) of the catalog; None: all rows (no selection).

    Raises
    ------
    RunError
        A malformed range, a missing or empty id file, ids not in the catalog, or an invalid expression.
    """
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


def selection_spec(chunks: str | None, objects: str | None, where: str | None) -> str:
    """The identity of a reprocessing selection: ``chunks=A:B``, ``objects=sha256:<16 hex of the id file>`` or
    ``where=EXPR``; ``""`` for none (the main job).

    Raises
    ------
    RunError
        ``--objects`` names a file that does not exist.
    """
    if objects:
        op = Path(objects)
        if not op.exists():
            raise RunError(f"--objects {objects}: file not found")
        return f"objects=sha256:{hashlib.sha256(op.read_bytes()).hexdigest()[:16]}"
    return chunks and f"chunks={chunks}" or where and f"where={where}" or ""


def job_for(cat_path: Path, rows: np.ndarray | None, fingerprint: dict, spec: str) -> tuple[str, np.ndarray | None]:
    """Main job, or a reprocessing job keyed by (selection spec, fingerprint), its rows frozen on first start.

    The one write of planning: a reprocessing job's rows are saved (``_jobs/<job>.npy``, atomically) when it first
    starts, so that resuming it computes the same rows whatever the expression selects later.

    Returns
    -------
    (job, rows)
        The job name and its frozen rows (None: the main job, or every row).
    """
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
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:
            np.save(fh, rows.astype(np.int64), allow_pickle=False)
    return job, rows


def job_rows(cat_path: str | Path, job: str) -> np.ndarray | None:
    """The frozen rows of a reprocessing job (None: the main job, or a job over every row)."""
    f = Path(cat_path) / JOBS / f"{job}.npy"
    return np.load(f, allow_pickle=False) if f.exists() else None


def is_whole(m: dict) -> bool:
    """Whether a done-marker is of a whole-block write (not a merge of selected rows)."""
    return bool(m.get("whole", m.get("job") == "main"))


# ---- the catalog folder ----------------------------------------------------------------------------------------
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



def job_blocks(n: int, block_objects: int, rows: np.ndarray | None) -> dict[int, np.ndarray | None]:
    """The blocks of a job and the job's rows in each.

    Parameters
    ----------
    n : rows of the catalog. block_objects : rows per block.
    rows : the job's rows (sorted), None for every row.

    Returns
    -------
    dict
        block -> its rows in the job, or None when the job covers the whole block (a whole-block write, no merge).
    """
    bounds = block_bounds(n, block_objects)
    if rows is None:
        return {i: None for i in range(len(bounds))}
    blk_of = rows // block_objects
    return {int(b): (None if int((blk_of == b).sum()) == bounds[b][1] - bounds[b][0] else rows[blk_of == b])
            for b in np.unique(blk_of)}


def block_states(cat_path: Path, job: str, blocks: dict[int, np.ndarray | None], bounds: list,
                 fingerprint: dict | None, *, full: bool = True, input_store: Path | None = None,
                 chunk_rows: dict | None = None, run_id: int | None = None, markers: dict | None = None,
                 run_ids: np.ndarray | None = None) -> dict[int, tuple[bool, str]]:
    """Whether each block of a job is done, and if not why.

    Parameters
    ----------
    blocks : :func:`job_blocks` of the job.
    bounds : ``block_bounds`` of the catalog.
    fingerprint : the job's fingerprint (None: take each marker's own).
    full : the full resume check (:func:`~survey_infer.pipeline.resume.block_is_done`: input stamps or hashes,
        stored output against the latest marker, rows rewritten since; reads the catalog and maybe the input, in
        :data:`CHECK_THREADS` threads); False: trust the markers (present, same bounds and fingerprint).
    input_store, chunk_rows, run_id, run_ids : for the full check (``chunk_rows`` read from the input when None).
    markers : :func:`~survey_infer.pipeline.resume.load_markers` of the catalog (read here when None).

    Returns
    -------
    dict
        block -> (done, reason); the reason says why a block must be (re)computed (``"no marker"``, ...).
    """
    markers = load_markers(cat_path) if markers is None else markers
    mine = markers.get(job, {})

    def cheap(b: int) -> tuple[bool, str]:
        m = mine.get(b)
        if not m:
            return False, "no marker"
        if m.get("lo") != bounds[b][0] or m.get("hi") != bounds[b][1]:
            return False, "block bounds changed (input appended)"
        if fingerprint and m.get("fingerprint") != fingerprint:
            return False, "fingerprint differs"
        return True, "done"

    if not full:
        return {b: cheap(b) for b in blocks}
    if chunk_rows is None:
        chunk_rows = input_chunk_rows(input_store)

    def check(item):
        b, r = item
        fp = fingerprint if fingerprint is not None else (mine.get(b) or {}).get("fingerprint")
        return block_is_done(cat_path, job, b, *bounds[b], fp, input_store, chunk_rows, rows=r, run_id=run_id,
                             markers=markers, run_ids=run_ids)

    # verification is I/O and decompression (which release the GIL): a few threads
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
        return dict(zip(blocks, pool.map(check, blocks.items())))


@dataclass
class Plan:
    """What a run will do: its job and run id, and the job's blocks sorted by state.

    ``pending`` holds ``(block, lo, hi, rows)`` to compute; ``redo`` ``(block, reason)`` for pending blocks that had
    a marker; ``not_ready`` the blocks of a reprocessing selection the main job has not computed yet; ``notes``
    lines for the user.
    """

    job: str
    run_id: int
    spec: str
    rows: np.ndarray | None
    prior: dict | None
    bounds: list
    chunk_rows: dict
    blocks: dict
    pending: list = field(default_factory=list)
    done_before: int = 0
    redo: list = field(default_factory=list)
    not_ready: list = field(default_factory=list)
    check_s: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def n_todo(self) -> int:
        """Objects to compute."""
        return sum((hi - lo) if r is None else len(r) for _, lo, hi, r in self.pending)


def plan_run(cat_path: Path, g_cat, input_store: Path, fingerprint: dict, spec: str, rows: np.ndarray | None) -> Plan:
    """The job, run id and pending blocks of a run on an open catalog (nothing is computed or written, except
    the frozen rows of a reprocessing job when it first starts: :func:`job_for`).

    Parameters
    ----------
    cat_path : the catalog. g_cat : its Zarr group (read: attrs, ``run_id``).
    input_store : the survey store.
    fingerprint : this run's numerics fingerprint.
    spec : the selection's identity (``""`` for the main job, ``"all"`` to reprocess every row).
    rows : the selection's rows now (None: every row).

    Returns
    -------
    Plan
    """
    attrs = dict(g_cat.attrs)
    n, bo = int(g_cat["object_id"].shape[0]), int(attrs["block_objects"])
    job, frozen = job_for(cat_path, rows, fingerprint, spec)
    notes = []
    if rows is not None and frozen is not None and not np.array_equal(rows, frozen):
        notes.append(f"job {job}: resuming with the selection frozen when it started ({len(frozen):,} rows; the "
                     f"expression now selects {len(rows):,})")
    runs = list(attrs.get("runs", []))
    prior = [r for r in runs if r.get("job") == job and r.get("fingerprint") == fingerprint]
    run_id = int(prior[-1]["run_id"]) if prior else (max([int(r["run_id"]) for r in runs], default=-1) + 1)
    plan = Plan(job=job, run_id=run_id, spec=spec, rows=frozen, prior=prior[-1] if prior else None,
                bounds=block_bounds(n, bo), chunk_rows=input_chunk_rows(input_store),
                blocks=job_blocks(n, bo, frozen), notes=notes)
    t_check = time.time()
    markers = load_markers(cat_path)
    states = block_states(cat_path, job, plan.blocks, plan.bounds, fingerprint, input_store=input_store,
                          chunk_rows=plan.chunk_rows, run_id=run_id, markers=markers,
                          run_ids=g_cat["run_id"][:] if n <= RUN_ID_IN_MEMORY else None)  # else read per block
    for b, r in plan.blocks.items():
        lo, hi = plan.bounds[b]
        ok, why = states[b]
        if ok:
            plan.done_before += 1
        elif job != "main" and r is not None and not any(
                is_whole(jm[b]) and jm[b].get("lo") == lo and jm[b].get("hi") == hi
                for jm in markers.values() if b in jm):
            plan.not_ready.append(b)
        else:
            plan.pending.append((b, lo, hi, r))
            if why != "no marker":
                plan.redo.append((b, why))
    plan.check_s = time.time() - t_check
    return plan
