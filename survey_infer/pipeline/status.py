"""``survey-infer status CATALOG``: done / failed / pending blocks and objects of every job, the fingerprint, the
lock, failures with their reasons, which run wrote how many rows, and the time left at the measured rate.

By default the done-markers are trusted (cheap: no catalog data is read). ``--verify`` applies the same full
check as a resuming ``run`` (input stamps or hashes, stored output against the latest marker, rows rewritten
since), which reads the catalog and, where input files were touched, the input.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .resume import FAILURES, holder_is_dead, load_markers, lock_record, marker_order, read_json


def _lock_state(lk: dict | None) -> dict | None:
    if not lk:
        return None
    age = time.time() - float(lk.get("heartbeat", 0))
    if lk.get("released"):
        state = "released"
    elif holder_is_dead(lk):
        state = "dead holder (will be taken over)"
    elif age >= float(lk.get("lease_s", 60)):
        state = "expired (will be taken over)"
    else:
        state = "held by a live run"
    return {**{k: lk.get(k) for k in ("owner", "epoch", "lease_s", "taken_over")}, "heartbeat_age_s": round(age, 1),
            "state": state}


def hardware_classes(markers: dict[str, dict[int, dict]], n_blocks: int) -> dict[str, list[int]]:
    """Hardware class (:func:`survey_infer.provenance.hardware_label`) of the stored rows of every block: the class
    recorded in the block's latest marker over all jobs (the one that wrote what is stored). More than one class
    means the catalog mixes hardware (bit identity holds only within one class).

    Returns
    -------
    dict
        label -> sorted block numbers (blocks without a marker are left out).
    """
    from ..provenance import hardware_label

    out: dict[str, list[int]] = {}
    for b in range(n_blocks):
        cands = [jm[b] for jm in markers.values() if b in jm]
        if cands:
            out.setdefault(hardware_label(max(cands, key=marker_order).get("hardware")), []).append(b)
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def catalog_status(catalog: str | Path, verify: bool = False) -> dict:
    """Status of every job of a catalog.

    Parameters
    ----------
    catalog : path of the catalog.
    verify : apply the full resume check to every block marked done (reads the catalog; see module doc).

    Returns
    -------
    dict with ``n_objects``, ``n_blocks``, ``block_objects``, ``fingerprint`` (with, on a GPU catalog, the GPU's
    name, compute capability, SM count, CUDA and cuDNN), ``runs`` (history), ``lock``, ``rows_by_run`` and per job
    in ``jobs``: blocks and objects done / failed / pending, ``failures`` (block, reason), the measured rate
    (spectra/s of wall time in the job's latest run, and per worker-second) and the estimated time left.

    Raises
    ------
    FileNotFoundError
        No catalog at ``catalog``, or (``verify``) its input store is missing.
    """
    import zarr

    from ..catalog.store import block_bounds
    from .plan import JOBS

    cat = Path(catalog)
    if not (cat / "zarr.json").exists():
        raise FileNotFoundError(f"catalog {cat} does not exist (no zarr.json)")
    g = zarr.open_group(str(cat), mode="r", zarr_format=3, use_consolidated=False)
    attrs = dict(g.attrs)
    if "block_objects" not in attrs:
        raise FileNotFoundError(f"{cat} is a Zarr group but not a survey-infer catalog")
    n = int(g["object_id"].shape[0])
    bounds = block_bounds(n, int(attrs["block_objects"]))
    runs = attrs.get("runs", [])
    all_markers = load_markers(cat)
    jobs = ["main"] + sorted({*all_markers, *(p.stem for p in (cat / JOBS).glob("*.npy")),
                              *(r.get("job") for r in runs if r.get("job"))} - {"main"})
    out = {"catalog": str(cat), "n_objects": n, "block_objects": int(attrs["block_objects"]), "n_blocks": len(bounds),
           "fingerprint": attrs.get("fingerprint"), "runs": runs, "lock": _lock_state(lock_record(cat)),
           "hardware": hardware_classes(all_markers, len(bounds)),
           "rows_by_run": _rows_by_run(g, n), "jobs": {}, "verified": verify}
    inp = None
    if verify:
        inp = Path(attrs.get("input_store", ""))
        if not (inp / "zarr.json").exists():
            raise FileNotFoundError(f"--verify needs the input store the catalog was made from ({inp}), which is "
                                    f"missing")
    for job in jobs:
        out["jobs"][job] = _job_status(cat, job, attrs, n, bounds, runs, all_markers, inp)
    return out


def _rows_by_run(g, n: int) -> dict[int, int]:
    """Rows of the catalog per ``run_id`` that wrote them (-1: not computed), read in bounded slices."""
    by_run: dict[int, int] = {}
    step = 1 << 22
    for s0 in range(0, n, step):  # bounded memory on any catalog size
        ids, counts = np.unique(g["run_id"][s0:s0 + step], return_counts=True)
        for i, c in zip(ids, counts):
            by_run[int(i)] = by_run.get(int(i), 0) + int(c)
    return dict(sorted(by_run.items()))


def _job_status(cat: Path, job: str, attrs: dict, n: int, bounds: list, runs: list, all_markers: dict,
                input_store: Path | None) -> dict:
    """One job's entry of :func:`catalog_status` (``input_store`` given: ``--verify``, the full check)."""
    from .plan import block_states, job_blocks, job_rows

    markers = all_markers.get(job, {})
    jruns = [r for r in runs if r.get("job") == job]
    fails = {}
    fdir = cat / FAILURES / job
    for f in fdir.glob("block-*.json") if fdir.exists() else []:
        m = read_json(f)
        if m:
            fails[int(m["block"])] = m
    blocks = job_blocks(n, int(attrs["block_objects"]), job_rows(cat, job) if job != "main" else None)
    per_block = {b: (bounds[b][1] - bounds[b][0]) if r is None else len(r) for b, r in blocks.items()}
    fp = jruns[-1].get("fingerprint") if jruns else (attrs.get("fingerprint") if job == "main" else None)
    marked = {b for b, (ok, _) in block_states(cat, job, blocks, bounds, fp, full=False,
                                                markers=all_markers).items() if ok}
    why_not = {}
    if input_store is not None and marked:
        full = block_states(cat, job, {b: blocks[b] for b in sorted(marked)}, bounds, None, full=True,
                            input_store=input_store, run_id=int(jruns[-1]["run_id"]) if jruns else None,
                            markers=all_markers)
        why_not = {b: why for b, (ok, why) in full.items() if not ok}
    done = [b for b in per_block if b in marked and b not in why_not]
    dset = set(done)
    failed = [b for b in per_block if b in fails and b not in dset]
    pending = [b for b in per_block if b not in dset and b not in fails]
    obj_left = sum(per_block[b] for b in pending + failed)
    rate_wall, rate_worker = _rates(markers, jruns)
    return {
        "run_id": jruns[-1].get("run_id") if jruns else None, "selection": jruns[-1].get("selection") if jruns
        else ("all" if job == "main" else None), "status": jruns[-1].get("status") if jruns else None,
        "fingerprint": fp, "n_blocks": len(per_block), "n_objects": int(sum(per_block.values())),
        "blocks_done": len(done), "blocks_failed": len(failed), "blocks_pending": len(pending),
        "objects_done": sum(per_block[b] for b in done), "objects_left": obj_left,
        "rate_spectra_per_s": rate_wall, "rate_spectra_per_worker_s": rate_worker,
        "eta_s": obj_left / rate_wall if rate_wall and obj_left else (0.0 if not obj_left else None),
        "failures": [{"block": b, "reason": fails[b].get("reason")} for b in sorted(failed)],
        "not_verified": [{"block": b, "reason": r} for b, r in sorted(why_not.items())],
    }


def _rates(markers: dict[int, dict], jruns: list[dict]) -> tuple[float | None, float | None]:
    """Measured rate of a job: objects finished by its latest epoch per second of wall time since that run started,
    and per worker-second (None: not measured)."""
    if not markers:
        return None, None
    last_epoch = max(int(m.get("epoch", -1)) for m in markers.values())
    last = [m for m in markers.values() if int(m.get("epoch", -1)) == last_epoch]
    start = next((float(r["started_unix"]) for r in reversed(jruns) if r.get("epoch") == last_epoch
                  and r.get("started_unix")), None)
    t_end = max(float(m.get("time", 0)) for m in last)
    if start is None:
        start = min(float(m.get("time", 0)) - sum(m.get("timings", {}).values()) for m in last)
    n_last = sum(int(m.get("n_rows", 0)) for m in last)
    rate_wall = n_last / (t_end - start) if t_end > start else None
    secs = sum(sum(m.get("timings", {}).values()) for m in last)
    return rate_wall, (n_last / secs if secs > 0 else None)


def _dur(s: float | None) -> str:
    """A duration in seconds as ``"42 s"``, ``"3.5 min"`` or ``"2.1 h"``."""
    if s is None:
        return "unknown"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_status(st: dict) -> str:
    """The text ``survey-infer status`` prints for a :func:`catalog_status` record (jobs, failures, hardware, the
    GPU of a GPU catalog, lock, fingerprint, runs, rows by run)."""
    out: list[str] = []
    out.append(f"catalog {st['catalog']}: {st['n_objects']:,} objects in {st['n_blocks']} blocks of "
               f"{st['block_objects']}")
    for job, j in st["jobs"].items():
        head = f"  job {job}" + (f" (run_id {j['run_id']}, selection {j['selection']}, {j['status']})"
                                 if j["run_id"] is not None else "")
        out.append(head + f": {j['blocks_done']}/{j['n_blocks']} blocks done ({j['objects_done']:,} objects), "
                   f"{j['blocks_failed']} failed, {j['blocks_pending']} pending ({j['objects_left']:,} objects left)")
        if job != "main" and j["fingerprint"] and st["fingerprint"]:
            d = {k: v for k, v in j["fingerprint"].items() if st["fingerprint"].get(k) != v}
            out.append("    numerics: " + (", ".join(f"{k}={v}" for k, v in d.items()) or "same as the catalog's"))
        if j["objects_left"]:
            rate = j["rate_spectra_per_s"]
            out.append(f"    time left: ~{_dur(j['eta_s'])}" + (f" at the last run's {rate:,.0f} spectra/s" if rate else
                                                                " (no rate measured yet)"))
        for f in j["failures"]:
            out.append(f"    FAILED block {f['block']}: {f['reason']}")
        for f in j["not_verified"]:
            out.append(f"    block {f['block']} has a marker but will be recomputed: {f['reason']}")
    hw = st.get("hardware") or {}
    if len(hw) > 1:
        out.append("  MIXED HARDWARE: "
                   + "; ".join(f"{len(b)} block(s) on {k} (e.g. block {b[0]})" for k, b in hw.items())
                   + ". Results are bit-identical only within one hardware class: pin runs to one partition (Slurm "
                   "partition or constraint) to keep a catalog uniform; a catalog written anew on one partition is.")
    elif hw:
        out.append(f"  hardware: {next(iter(hw))}")
    lk = st["lock"]
    if lk:
        out.append(f"  lock: epoch {lk['epoch']}, {lk['state']}, owner {lk['owner']}, last heartbeat "
                   f"{_dur(lk['heartbeat_age_s'])} ago")
    fp = st["fingerprint"] or {}
    if fp.get("gpu"):  # the workers' GPU (issue 15): results are bit-identical only on this GPU and build
        out.append(f"  GPU: {fp['gpu']} (compute capability {fp.get('compute_capability')}, {fp.get('sm_count')} SMs), "
                   f"CUDA {fp.get('cuda')}, cuDNN {fp.get('cudnn')}, micro-batch {fp.get('micro_batch')}, fp32 "
                   f"{fp.get('fp32_precision')}")
    out.append("  fingerprint: " + ", ".join(f"{k}={v}" for k, v in fp.items()))
    live = bool(lk) and lk["state"] == "held by a live run"
    for r in st["runs"]:
        status = r.get("status")
        if status == "running" and not (live and lk.get("epoch") == r.get("epoch")):
            status = "interrupted (its driver is gone; re-run the same command to resume)"
        out.append(f"  run {r.get('run_id')}: job {r.get('job')}, selection {r.get('selection')}, status {status}, "
                   f"epoch {r.get('epoch')}, started {r.get('started')}"
                   + (f", blocks computed {r['blocks_computed']}" if r.get("blocks_computed") is not None else ""))
        if r.get("reason"):
            out.append(f"    FAILED: the run stopped: {r['reason']}")
    rows = ", ".join(f"{'not computed' if k < 0 else f'run {k}'}: {v:,}" for k, v in st["rows_by_run"].items())
    out.append(f"  rows by run: {rows}")
    return "\n".join(out)
