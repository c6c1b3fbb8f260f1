"""Executing a run's plan: the block tasks on a Dask cluster (or in this process), a bounded number in flight,
their status records collected and each success confirmed by the block's own done-marker."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from ..errors import ClusterError
from ..provenance import software_versions
from .clusters import describe_dask_error, start_client
from .clusters.health import ClusterHealth
from .faults import TransientIOError, fault_point
from .lock import LOCK, LeaseLock
from .resume import marker_path, read_json, rows_hash
from .summary import RunSummary
from .worker import ModelPlugin, RunContext, process_block

TRANSIENT_RETRIES = 3  # a block failing on a transient OSError (NFS hiccup) is retried this many times


def execute_blocks(pending: list, ctx: RunContext, *, cluster: str, workers: int, client=None,
                   max_in_flight: int | None = None, progress: bool = True, slurm_options: dict | None = None,
                   summary: RunSummary, print_fn=print, lock: LeaseLock | None = None,
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

    Parameters
    ----------
    pending : ``(block, lo, hi, rows)`` to compute (:attr:`survey_infer.pipeline.plan.Plan.pending`).
    ctx : what every task needs. cluster, workers, slurm_options : where the tasks run
        (:func:`~survey_infer.pipeline.clusters.start_client`; ``"inprocess"``: here, without Dask).
    client : an existing client (not closed here); None: a cluster is started and closed here.
    max_in_flight : tasks in flight (default: two per worker thread, at least two per worker).
    summary : receives ``dashboard`` and ``stopped``.
    lock : the run's catalog lock (its heartbeat is tied to this loop's progress).
    grace_s : seconds of unreachable scheduler or no worker before the driver stops.

    Returns
    -------
    list of dict
        One status record per block (``ok``, ``reason``, ``n``, ``zwarn``, ``timings``, ...).
    """
    col = _Collector(pending, ctx, lock, progress)
    if not pending:
        col.bar.close()
        return col.results
    if cluster == "inprocess":
        from .worker import _set_threads

        _set_threads(ctx.torch_threads)
        for i, (b, lo, hi, r) in enumerate(pending):
            if col.lost():
                col.not_run([p[0] for p in pending[i:]])
                break
            col.done(run_with_retries(b, lo, hi, ctx, r))
        col.bar.close()
        return col.results
    own, own_client = None, client is None
    if client is None:
        client, own = start_client(cluster, workers, slurm_options=slurm_options)
    try:
        _DaskLoop(client, ctx, col, cluster=cluster, workers=workers, max_in_flight=max_in_flight, summary=summary,
                  print_fn=print_fn, grace_s=grace_s).run(pending)
    finally:
        col.bar.close()
        if own_client:
            close_client(client, own)
    return col.results


class _Collector:
    """The driver's record of block results: the progress bar, the records, and whether the run still owns the
    catalog lock."""

    def __init__(self, pending: list, ctx: RunContext, lock: LeaseLock | None, progress: bool):
        from tqdm import tqdm

        total = sum((hi - lo) if r is None else len(r) for _, lo, hi, r in pending)
        self.bar = tqdm(total=total, unit="spec", desc="run", disable=not progress, smoothing=0)  # one rate: the mean
        self.results: list[dict] = []
        self.ctx, self.lock = ctx, lock

    def done(self, rec: dict) -> None:
        """Record a block's status record (and show it on the progress bar)."""
        fault_point("block-done")
        self.results.append(rec)
        if rec.get("ok"):
            self.bar.update(rec["n"])
        else:
            self.bar.write(f"block {rec['block']} failed: {rec['reason']}")

    def lost(self) -> bool:
        """Whether this run lost the catalog lock (taken over, or a task refused as stale)."""
        lock = self.lock
        return lock is not None and (lock.lost.is_set() or bool(self.results and self.results[-1].get("stale"))
                                     or not lock.still_owner())

    def not_run(self, blocks) -> None:
        """Record ``blocks`` as not run because the lock was lost (naming the run that holds it)."""
        cur = read_json(Path(self.ctx.catalog) / LOCK) or {}
        for b in blocks:
            self.results.append({"block": b, "ok": False, "reason": f"not run: this run (epoch {self.ctx.epoch}) lost "
                                 f"the catalog lock to {cur.get('owner')} (epoch {cur.get('epoch')})"})


class _DaskLoop:
    """The submit / collect loop of :func:`execute_blocks` on a Dask client."""

    def __init__(self, client, ctx: RunContext, col: _Collector, *, cluster: str, workers: int,
                 max_in_flight: int | None, summary: RunSummary, print_fn, grace_s: float):
        self.client, self.ctx, self.col = client, ctx, col
        self.cluster, self.workers, self.max_in_flight = cluster, workers, max_in_flight
        self.summary, self.print_fn, self.grace_s = summary, print_fn, grace_s
        self.cat_path = Path(ctx.catalog)
        self.token = uuid.uuid4().hex[:10]
        self.in_flight: dict[str, tuple] = {}
        self.queue: list = []
        self.retries: dict[int, int] = {}
        self.last_tick = time.monotonic()
        self.health: ClusterHealth | None = None

    def tick(self) -> None:
        """The loop made progress (the lock's heartbeat goes on only while it does)."""
        self.last_tick = time.monotonic()

    def run(self, pending: list) -> None:
        """Run ``pending`` blocks to the end, or until the lock or the cluster is lost."""
        lock = self.col.lock
        stall_s = max(3 * (lock.lease_s if lock else 60.0), 2 * self.grace_s)
        if lock is not None:
            lock.alive_check = lambda: time.monotonic() - self.last_tick < stall_s
        self.queue = list(pending)
        try:
            self.health = ClusterHealth(self.client, self.grace_s, wait_first_worker=self.cluster == "slurm")
            self._start()
            stop_reason = self._loop()
            if stop_reason:
                self._stop(stop_reason)
        finally:
            if lock is not None:
                lock.alive_check = None
            if self.health is not None:
                self.health.close()

    def _start(self) -> None:
        from distributed import as_completed

        client = self.client
        self.summary.dashboard = client.dashboard_link
        self.print_fn(f"dashboard: {client.dashboard_link}")
        register_model_plugin(client, self.ctx, self.grace_s, self.print_fn)
        self.tick()
        try:
            n_workers = int(client.scheduler_info(n_workers=1).get("n_workers", 0)) or self.workers
        except Exception:  # noqa: BLE001 - judged by the health check below
            n_workers = self.workers
        try:  # two tasks in flight per worker thread (a GPU worker runs several threads; issue 15)
            n_threads = sum(int(w.get("nthreads", 1)) for w in client.scheduler_info(n_workers=-1)["workers"].values())
        except Exception:  # noqa: BLE001
            n_threads = n_workers
        self.limit = self.max_in_flight or max(2, 2 * max(1, n_workers), 2 * n_threads)
        self.futs = as_completed()

    def _submit_next(self) -> None:
        b, lo, hi, r = self.queue.pop(0)
        ctx = self.ctx
        f = self.client.submit(process_block, b, lo, hi, ctx, r, key=f"block-{ctx.job}-{b}-e{ctx.epoch}-{self.token}",
                               pure=False, retries=TRANSIENT_RETRIES)  # retries: transient OSErrors (NFS hiccups)
        self.in_flight[f.key] = (f, b, lo, hi, r)
        self.futs.add(f)

    def _loop(self) -> str | None:
        """Submit and collect until every block is recorded; a reason to stop (cluster gone) or None."""
        while self.queue or self.in_flight:
            self.tick()
            if self.health.client_ok():
                try:
                    while self.queue and len(self.in_flight) < self.limit:
                        self._submit_next()
                except Exception as exc:  # noqa: BLE001 - the client closed between the check and the submit
                    self.health.note(describe_dask_error(exc))
            batch = self.futs.next_batch(block=False) if self.futs.has_ready() else []
            if not batch:
                time.sleep(0.1)
            for fut in batch:
                if self._collect(fut):
                    break
            if self.queue or self.in_flight:
                stop_reason = self.health.check()
                if stop_reason:
                    return stop_reason
        return None

    def _result(self, fut, b: int) -> dict | None:
        """The task's status record; None when the result was lost with the scheduler connection or cancelled."""
        try:
            if fut.status == "cancelled" or not self.health.client_ok():
                return None
            return fut.result(timeout=5)  # a result held by a worker that just died can hang the gather
        except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError, a cancelled future, ...
            if self.health.is_connection_error(exc):
                self.health.note(describe_dask_error(exc))
                return None
            rec = {"block": b, "ok": False, "reason": describe_dask_error(exc) + (
                f" (still failing after {TRANSIENT_RETRIES} retries)" if isinstance(exc, TransientIOError) else "")}
            heard = self.health.heard.text() if type(exc).__name__ == "KilledWorker" else None
            if heard:
                rec["reason"] += f"; last cluster message: {heard}"
            return rec

    def _collect(self, fut) -> bool:
        """Record one finished task; True when the run lost the catalog lock (stop: the rest is not run)."""
        item = self.in_flight.pop(fut.key, None)
        if item is None:
            return False
        _, b, lo, hi, r = item
        ctx = self.ctx
        rec = self._result(fut, b)
        if rec is None and not marker_problem(self.cat_path, ctx.job, b, lo, hi, ctx.fingerprint, ctx.epoch,
                                              ctx.run_id, r):
            # the result was lost (with its worker or the scheduler connection) but the block's own marker
            # from this run proves it done
            rec = {"block": b, "ok": True, "n": (hi - lo) if r is None else len(r), "zwarn": {},
                   "n_reliable": 0, "timings": {}, "confirmed_by_marker": True}
        if rec is None:  # lost with the scheduler connection: run it again if the cluster comes back
            self.retries[b] = self.retries.get(b, 0) + 1
            if self.retries[b] <= 3:
                self.queue.insert(0, (b, lo, hi, r))
                return False
            rec = {"block": b, "ok": False, "reason": "cancelled by Dask 3 times (scheduler connection lost "
                   "or the task cancelled)" + (f": {self.health.last_error}" if self.health.last_error else "")}
        if rec.get("ok"):
            why = marker_problem(self.cat_path, ctx.job, b, lo, hi, ctx.fingerprint, ctx.epoch, ctx.run_id, r)
            if why:
                rec = {"block": b, "ok": False, "reason": f"the task reported success but {why}"}
        self.col.done(rec)
        try:
            fut.release()
        except Exception:  # noqa: BLE001
            pass
        if not self.col.lost():
            return False
        rest = [v[1] for v in self.in_flight.values()] + [q[0] for q in self.queue]
        _cancel(self.client, [v[0] for v in self.in_flight.values()])
        self.in_flight.clear()
        self.queue.clear()
        self.col.not_run(sorted(rest))
        self.print_fn(f"this run lost the catalog lock: stopped; {len(rest)} block(s) left to the run that holds it")
        return True

    def _stop(self, reason: str) -> None:
        """The cluster is gone: cancel what is in flight and record every block left as not run."""
        rest = sorted([v[1] for v in self.in_flight.values()] + [q[0] for q in self.queue])
        _cancel(self.client, [v[0] for v in self.in_flight.values()])
        self.summary.stopped = reason
        self.col.bar.write(f"stopped: {reason}")
        for b in rest:
            self.col.results.append({"block": b, "ok": False, "reason": f"not run: {reason}"})


def marker_problem(cat_path: Path, job: str, block: int, lo: int, hi: int, fingerprint: dict, epoch: int,
                    run_id: int, rows: np.ndarray | None) -> str | None:
    """Why the done-marker a task of this run (``epoch``) should just have written does not prove its block done;
    None when it does."""
    m = read_json(marker_path(cat_path, job, block))
    if not m:
        return "its done-marker is missing from the catalog"
    if int(m.get("epoch", -1)) != int(epoch) or int(m.get("run_id", -1)) != int(run_id):
        return (f"its done-marker is from another run (epoch {m.get('epoch')}, run_id {m.get('run_id')}; this run: "
                f"epoch {epoch}, run_id {run_id})")
    if (m.get("lo") != lo or m.get("hi") != hi or m.get("fingerprint") != fingerprint
            or m.get("rows_hash") != rows_hash(rows)):
        return "its done-marker is for other rows or numerics"
    return None



def run_with_retries(b: int, lo: int, hi: int, ctx: RunContext, r) -> dict:
    """In-process execution of one block with the retries Dask gives a task (``retries=TRANSIENT_RETRIES``):
    only a :class:`~survey_infer.pipeline.faults.TransientIOError` (an NFS hiccup) is retried."""
    for _attempt in range(TRANSIENT_RETRIES + 1):
        try:
            return process_block(b, lo, hi, ctx, r)
        except TransientIOError as exc:
            last = exc
    return {"block": b, "ok": False, "reason": f"{type(last).__name__}: {last} (still failing after "
            f"{TRANSIENT_RETRIES} retries)"}



def register_model_plugin(client, ctx: RunContext, wait_s: float, print_fn) -> None:
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

    plugin = ModelPlugin(ctx.model_dir, ctx.model_sha256, software_versions(), ctx.device, ctx.torch_threads)
    pool = ThreadPoolExecutor(max_workers=1)
    fut = pool.submit(client.register_plugin, plugin, name=f"survey-infer-model-{ctx.model_sha256[:12]}")
    try:
        fut.result(timeout=wait_s)
    except FutTimeout:
        print_fn(f"note: the workers had not loaded the model after {wait_s:g} s; going on (tasks wait for them)")
    except Exception as exc:  # noqa: BLE001
        if ClusterHealth.is_connection_error(exc) or type(exc).__name__ == "KilledWorker":
            print_fn(f"note: a worker was lost while loading the model ({describe_dask_error(exc)}); going on")
        else:
            raise ClusterError(f"a Dask worker could not set up the model: {describe_dask_error(exc)}") from exc
    finally:
        pool.shutdown(wait=False)


def _cancel(client, futures: list) -> None:
    """Cancel ``futures`` if the client is still connected (best effort)."""
    if not futures:
        return
    try:
        if client.status == "running":
            client.cancel(futures)
    except Exception:  # noqa: BLE001 - the cluster may be gone
        pass


def close_client(client, own) -> None:
    """Close the client (and the cluster this run started) without hanging on a dead scheduler."""
    for obj in (client, own) if own is not None else (client,):
        try:
            if obj is client:
                client.close(timeout=10)
            else:
                obj.close(timeout=30)
        except Exception:  # noqa: BLE001 - best effort: the scheduler may be gone
            pass
