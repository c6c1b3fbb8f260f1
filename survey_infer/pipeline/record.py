"""Recording a run in its catalog: the run record in ``attrs["runs"]`` (running, then complete / incomplete /
stopped / lost-lock / interrupted, with its attempts), the end-of-run check that proves every block done by its
own marker, the failures under ``_failures/``, and the :class:`~survey_infer.pipeline.summary.RunSummary`."""
from __future__ import annotations

import time
from pathlib import Path


from ..flags import ZWARN_BITS
from ..provenance import provenance, utc_now
from .faults import fault_point
from .lock import LeaseLock
from .plan import RUN_ID_IN_MEMORY, Plan
from .resume import atomic_write_json, block_is_done, failure_path, load_markers
from .summary import RunSummary


def update_run_record(g_cat, run_rec: dict) -> None:
    """Put ``run_rec`` into the catalog's ``attrs["runs"]`` (replacing the record of the same run id) and
    re-consolidate the catalog's metadata."""
    runs = [r for r in dict(g_cat.attrs).get("runs", []) if r.get("run_id") != run_rec["run_id"]] + [run_rec]
    g_cat.attrs.update({"runs": runs})
    from ..catalog.store import consolidate_catalog

    consolidate_catalog(g_cat.store)  # keeps a user's plain xarray.open_zarr(catalog) silent (the update drops it)


def start_record(g_cat, plan: Plan, fingerprint: dict, model, epoch: int) -> dict:
    """Write the record of a run that starts (status ``running``) and return it.

    Parameters
    ----------
    g_cat : the catalog's Zarr group (writable). plan : the run's plan. fingerprint : its numerics.
    model : the loaded model (path and sha256 recorded). epoch : the run's lock epoch.

    Returns
    -------
    dict
        The run record (its earlier attempts kept, at most 50).
    """
    rows = plan.rows
    run_rec = {"run_id": plan.run_id, "job": plan.job, "selection": plan.spec or "all",
               "n_selected": None if rows is None else int(len(rows)), "fingerprint": fingerprint,
               "model_dir": str(model.path), "model_sha256": model.sha256, "epoch": epoch, "started": utc_now(),
               "started_unix": time.time(), "status": "running", "command": provenance()["command"],
               "blocks_done_before": plan.done_before,
               "attempts": ((plan.prior or {}).get("attempts", []) if plan.prior else [])[-50:]}
    update_run_record(g_cat, run_rec)
    return run_rec


def summarise(summary: RunSummary, results: list[dict], n_todo: int, t_start: float) -> None:
    """Fill ``summary`` from the blocks' status records: failures, blocks computed, zwarn flag counts, reliable
    objects, stage timings, peak worker memory, wall time and rate (``n_todo`` objects since ``t_start``)."""
    failed = sorted((r for r in results if not r.get("ok")), key=lambda r: r["block"])
    summary.blocks_failed = [{"block": r["block"], "reason": r["reason"]} for r in failed]
    summary.blocks_computed = len(results) - len(failed)
    counts: dict[str, int] = {}
    for r in results:
        if r.get("ok"):
            for name, n in r["zwarn"].items():  # flags.flag_counts of the block
                counts[name] = counts.get(name, 0) + int(n)
            summary.n_reliable += r["n_reliable"]
            for k, v in r["timings"].items():
                summary.timings[k] = summary.timings.get(k, 0.0) + v
            summary.worker_max_rss_mb = max(summary.worker_max_rss_mb, float(r.get("max_rss_mb", 0.0)))
    summary.flag_counts = {b.name: counts.get(b.name, 0) for b in ZWARN_BITS if b.used}
    summary.seconds = time.time() - t_start
    summary.spectra_per_s = n_todo / summary.seconds if summary.seconds > 0 else 0.0


def finish_run(g_cat, run_rec: dict, summary: RunSummary, results: list[dict], plan: Plan, *, cat_path: Path,
               input_store: Path, fingerprint: dict, epoch: int, lock: LeaseLock, t_start: float) -> None:
    """End of a run: prove every block done (:func:`final_check`), record the failures, fill ``summary`` and
    write the run's final record, unless the run lost the catalog lock meanwhile (then nothing is written)."""
    lost = lock.lost.is_set() or not lock.still_owner()
    if not lost:
        # completion is proven, not assumed: every block of the job must now have a done-marker of its own that
        # validates (a task result alone proves nothing: e.g. a key shared with another run's task)
        n = int(g_cat["object_id"].shape[0])
        results = final_check(results, plan.blocks, plan.bounds, cat_path, plan.job, fingerprint, input_store,
                              plan.chunk_rows, plan.run_id, n, g_cat, epoch)
        record_failures(cat_path, plan.job, epoch, [r for r in results if not r.get("ok")], lock)
    summarise(summary, results, plan.n_todo, t_start)
    lost = lost or lock.lost.is_set() or not lock.still_owner()
    run_rec["attempts"] = run_rec["attempts"] + [{
        "epoch": epoch, "started": run_rec["started"], "seconds": round(summary.seconds, 3),
        "blocks_done_before": plan.done_before, "blocks_computed": summary.blocks_computed,
        "blocks_failed": len(summary.blocks_failed)}]
    run_rec.update({"finished": utc_now(), "status": "lost-lock" if lost else "stopped" if summary.stopped else
                    ("complete" if summary.ok else "incomplete"), "blocks_computed": summary.blocks_computed,
                    "blocks_failed": summary.blocks_failed[:100], "seconds": round(summary.seconds, 3)})
    if summary.stopped:
        run_rec["reason"] = summary.stopped
    if not lost:
        fault_point("run-record", cat_path / "zarr.json")
        update_run_record(g_cat, run_rec)


def mark_interrupted(g_cat, run_rec: dict | None, lock: LeaseLock) -> None:
    """Best effort while stopping on an exception or Ctrl-C: a run still recorded as ``running`` becomes
    ``interrupted`` (if this run still owns the catalog)."""
    if run_rec is None or run_rec.get("status") != "running" or g_cat is None:
        return
    try:
        if lock.still_owner():
            run_rec.update({"status": "interrupted", "finished": utc_now()})
            update_run_record(g_cat, run_rec)
    except Exception:  # noqa: BLE001 - best effort while stopping
        pass


def final_check(results: list[dict], todo_blocks: dict, bounds, cat_path: Path, job: str, fp: dict,
                input_store: Path, chunk_rows: dict, run_id: int, n: int, g_cat, epoch: int) -> list[dict]:
    """End-of-run check: a block is done only when its own done-marker validates (:func:`block_is_done`).

    * a block whose task reported success is checked without re-reading its output (the task hashed it as
      stored); if its marker does not validate it becomes a failure naming the reason;
    * a block the driver could not confirm (its task or its result was lost with a worker or the scheduler) is
      done after all when this run's marker of it validates in full (output re-read): the work was done;
    * a block failed for a reason the task itself returned stays failed.

    Returns
    -------
    list of dict
        The status records, one per block of the job (plus records of blocks outside it).
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
                out.append({"block": b, "ok": True, "n": int(m.get("n_rows", hi - lo)), "zwarn": {},
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


def record_failures(cat_path: Path, job: str, epoch: int, failed: list[dict], lock: LeaseLock) -> None:
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
