"""``survey-infer status CATALOG``: done / failed / pending blocks and objects of every job, the fingerprint, the
lock, failures with their reasons, which run wrote how many rows, and the time left at the measured rate.

By default the done-markers are trusted (cheap: no catalog data is read). ``--verify`` applies the same full
check as a resuming ``run`` (input stamps or hashes, stored output against the latest marker, rows rewritten
since), which reads the catalog and, where input files were touched, the input.
"""
from __future__ import annotations

import json
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
    dict with ``n_objects``, ``n_blocks``, ``block_objects``, ``fingerprint``, ``runs`` (history), ``lock``,
    ``rows_by_run`` and per job in ``jobs``: blocks and objects done / failed / pending, ``failures`` (block,
    reason), the measured rate (spectra/s of wall time in the job's latest run, and per worker-second) and the
    estimated time left.
    """
    import zarr

    from ..catalog.store import block_bounds
    from .runner import JOBS, job_rows

    cat = Path(catalog)
    if not (cat / "zarr.json").exists():
        raise FileNotFoundError(f"catalog {cat} does not exist (no zarr.json)")
    g = zarr.open_group(str(cat), mode="r", zarr_format=3, use_consolidated=False)
    attrs = dict(g.attrs)
    if "block_objects" not in attrs:
        raise FileNotFoundError(f"{cat} is a Zarr group but not a survey-infer catalog")
    n = int(g["object_id"].shape[0])
    bo = int(attrs["block_objects"])
    bounds = block_bounds(n, bo)
    runs = attrs.get("runs", [])
    all_markers = load_markers(cat)
    jobs = ["main"] + sorted({*all_markers, *(p.stem for p in (cat / JOBS).glob("*.npy")),
                              *(r.get("job") for r in runs if r.get("job"))} - {"main"})
    by_run: dict[int, int] = {}
    step = 1 << 22
    for s0 in range(0, n, step):  # bounded memory on any catalog size
        ids, counts = np.unique(g["run_id"][s0:s0 + step], return_counts=True)
        for i, c in zip(ids, counts):
            by_run[int(i)] = by_run.get(int(i), 0) + int(c)
    out = {"catalog": str(cat), "n_objects": n, "block_objects": bo, "n_blocks": len(bounds),
           "fingerprint": attrs.get("fingerprint"), "runs": runs, "lock": _lock_state(lock_record(cat)),
           "hardware": hardware_classes(all_markers, len(bounds)),
           "rows_by_run": dict(sorted(by_run.items())), "jobs": {}, "verified": verify}
    checker = None
    if verify:
        checker = _verifier(cat, attrs, all_markers, n)
    for job in jobs:
        markers = all_markers.get(job, {})
        jruns = [r for r in runs if r.get("job") == job]
        fails = {}
        fdir = cat / FAILURES / job
        for f in fdir.glob("block-*.json") if fdir.exists() else []:
            m = read_json(f)
            if m:
                fails[int(m["block"])] = m
        rows = job_rows(cat, job) if job != "main" else None
        if rows is not None:
            blk = rows // bo
            per_block = {int(b): int(c) for b, c in zip(*np.unique(blk, return_counts=True))}
        else:
            per_block = {b: hi - lo for b, (lo, hi) in enumerate(bounds)}
        fp = jruns[-1].get("fingerprint") if jruns else (attrs.get("fingerprint") if job == "main" else None)
        done, why_not = [], {}
        for b in per_block:
            m = markers.get(b)
            if not m or m.get("lo") != bounds[b][0] or m.get("hi") != bounds[b][1] or (fp and m.get("fingerprint") != fp):
                continue
            if checker is not None:
                ok, why = checker(job, b, None if rows is None else rows[rows // bo == b],
                                  int(jruns[-1]["run_id"]) if jruns else None, m.get("fingerprint"))
                if not ok:
                    why_not[b] = why
                    continue
            done.append(b)
        dset = set(done)
        failed = [b for b in per_block if b in fails and b not in dset]
        pending = [b for b in per_block if b not in dset and b not in fails]
        obj_done = sum(per_block[b] for b in done)
        obj_left = sum(per_block[b] for b in pending + failed)
        # measured rate: objects finished by the job's latest epoch per second of wall time since that run started
        rate_wall = rate_worker = None
        if markers:
            last_epoch = max(int(m.get("epoch", -1)) for m in markers.values())
            last = [m for m in markers.values() if int(m.get("epoch", -1)) == last_epoch]
            start = next((float(r["started_unix"]) for r in reversed(jruns) if r.get("epoch") == last_epoch
                          and r.get("started_unix")), None)
            t_end = max(float(m.get("time", 0)) for m in last)
            if start is None:
                start = min(float(m.get("time", 0)) - sum(m.get("timings", {}).values()) for m in last)
            n_last = sum(int(m.get("n_rows", 0)) for m in last)
            if t_end > start:
                rate_wall = n_last / (t_end - start)
            secs = sum(sum(m.get("timings", {}).values()) for m in last)
            rate_worker = n_last / secs if secs > 0 else None
        status = jruns[-1].get("status") if jruns else None
        out["jobs"][job] = {
            "run_id": jruns[-1].get("run_id") if jruns else None, "selection": jruns[-1].get("selection") if jruns
            else ("all" if job == "main" else None), "status": status, "fingerprint": fp,
            "n_blocks": len(per_block), "n_objects": int(sum(per_block.values())),
            "blocks_done": len(done), "blocks_failed": len(failed), "blocks_pending": len(pending),
            "objects_done": obj_done, "objects_left": obj_left,
            "rate_spectra_per_s": rate_wall, "rate_spectra_per_worker_s": rate_worker,
            "eta_s": obj_left / rate_wall if rate_wall and obj_left else (0.0 if not obj_left else None),
            "failures": [{"block": b, "reason": fails[b].get("reason")} for b in sorted(failed)],
            "not_verified": [{"block": b, "reason": r} for b, r in sorted(why_not.items())],
        }
    return out


def _verifier(cat: Path, attrs: dict, markers: dict, n: int):
    """A function (job, block, rows, run_id, fingerprint) -> (ok, reason) applying the full resume check."""
    from ..catalog.store import block_bounds
    from .runner import _chunk_rows, block_is_done

    inp = Path(attrs.get("input_store", ""))
    if not (inp / "zarr.json").exists():
        raise FileNotFoundError(f"--verify needs the input store the catalog was made from ({inp}), which is missing")
    chunk_rows = _chunk_rows(inp)
    bounds = block_bounds(n, int(attrs["block_objects"]))

    def check(job, b, rows, run_id, fp):
        lo, hi = bounds[b]
        return block_is_done(cat, job, b, lo, hi, fp, inp, chunk_rows, rows=rows, run_id=run_id, markers=markers)

    return check


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="progress, failures and fingerprint of a catalog",
                              description="Done / failed / pending blocks and objects of every job of a catalog, "
                                          "failures with their reasons, the lock, which run wrote how many rows, "
                                          "and the time left at the measured rate.")
    p.add_argument("catalog")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--verify", action="store_true",
                   help="check every done block as a resuming run would (reads the catalog; slower)")
    p.set_defaults(func=main)


def _dur(s: float | None) -> str:
    if s is None:
        return "unknown"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def main(args) -> int:
    st = catalog_status(args.catalog, verify=args.verify)
    if args.json:
        print(json.dumps(st, indent=1, default=str))
        return 0
    print(f"catalog {st['catalog']}: {st['n_objects']:,} objects in {st['n_blocks']} blocks of {st['block_objects']}")
    for job, j in st["jobs"].items():
        head = f"  job {job}" + (f" (run_id {j['run_id']}, selection {j['selection']}, {j['status']})"
                                 if j["run_id"] is not None else "")
        print(head + f": {j['blocks_done']}/{j['n_blocks']} blocks done ({j['objects_done']:,} objects), "
              f"{j['blocks_failed']} failed, {j['blocks_pending']} pending ({j['objects_left']:,} objects left)")
        if job != "main" and j["fingerprint"] and st["fingerprint"]:
            d = {k: v for k, v in j["fingerprint"].items() if st["fingerprint"].get(k) != v}
            print("    numerics: " + (", ".join(f"{k}={v}" for k, v in d.items()) or "same as the catalog's"))
        if j["objects_left"]:
            rate = j["rate_spectra_per_s"]
            print(f"    time left: ~{_dur(j['eta_s'])}" + (f" at the last run's {rate:,.0f} spectra/s" if rate else
                                                           " (no rate measured yet)"))
        for f in j["failures"]:
            print(f"    FAILED block {f['block']}: {f['reason']}")
        for f in j["not_verified"]:
            print(f"    block {f['block']} has a marker but will be recomputed: {f['reason']}")
    hw = st.get("hardware") or {}
    if len(hw) > 1:
        print("  MIXED HARDWARE: " + "; ".join(f"{len(b)} block(s) on {k} (e.g. block {b[0]})" for k, b in hw.items())
              + ". Results are bit-identical only within one hardware class: pin runs to one partition (Slurm "
              "partition or constraint) to keep a catalog uniform; a catalog written anew on one partition is.")
    elif hw:
        print(f"  hardware: {next(iter(hw))}")
    lk = st["lock"]
    if lk:
        print(f"  lock: epoch {lk['epoch']}, {lk['state']}, owner {lk['owner']}, last heartbeat "
              f"{_dur(lk['heartbeat_age_s'])} ago")
    fp = st["fingerprint"] or {}
    print("  fingerprint: " + ", ".join(f"{k}={v}" for k, v in fp.items()))
    live = bool(lk) and lk["state"] == "held by a live run"
    for r in st["runs"]:
        status = r.get("status")
        if status == "running" and not (live and lk.get("epoch") == r.get("epoch")):
            status = "interrupted (its driver is gone; re-run the same command to resume)"
        print(f"  run {r.get('run_id')}: job {r.get('job')}, selection {r.get('selection')}, status {status}, "
              f"epoch {r.get('epoch')}, started {r.get('started')}"
              + (f", blocks computed {r['blocks_computed']}" if r.get("blocks_computed") is not None else ""))
        if r.get("reason"):
            print(f"    FAILED: the run stopped: {r['reason']}")
    rows = ", ".join(f"{'not computed' if k < 0 else f'run {k}'}: {v:,}" for k, v in st["rows_by_run"].items())
    print(f"  rows by run: {rows}")
    return 0
