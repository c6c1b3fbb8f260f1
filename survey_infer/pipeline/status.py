"""``survey-infer status CATALOG``: done / failed / pending blocks and objects, the fingerprint, failures with
their reasons, and the time left at the measured rate."""
from __future__ import annotations

import json
from pathlib import Path

from .resume import FAILURES, LOCK, MARKERS, read_json


def catalog_status(catalog: str | Path) -> dict:
    """Status of every job of a catalog (markers are trusted here; ``run`` verifies them fully)."""
    import zarr

    from ..io.catalog_store import block_bounds

    cat = Path(catalog)
    if not (cat / "zarr.json").exists():
        raise FileNotFoundError(f"catalog {cat} does not exist")
    g = zarr.open_group(str(cat), mode="r", zarr_format=3)
    attrs = dict(g.attrs)
    n = int(g["object_id"].shape[0])
    bo = int(attrs["block_objects"])
    bounds = block_bounds(n, bo)
    jobs = {}
    for jd in sorted((cat / MARKERS).glob("*")) if (cat / MARKERS).exists() else []:
        jobs[jd.name] = None
    jobs.setdefault("main", None)
    out = {"catalog": str(cat), "n_objects": n, "block_objects": bo, "n_blocks": len(bounds),
           "fingerprint": attrs.get("fingerprint"), "runs": attrs.get("runs", []), "lock": read_json(cat / LOCK),
           "jobs": {}}
    for job in jobs:
        markers = {}
        for f in (cat / MARKERS / job).glob("block-*.json"):
            m = read_json(f)
            if m:
                markers[int(m["block"])] = m
        fails = {}
        for f in (cat / FAILURES / job).glob("block-*.json") if (cat / FAILURES / job).exists() else []:
            m = read_json(f)
            if m:
                fails[int(m["block"])] = m
        if job == "main":
            blocks = range(len(bounds))
        else:
            blocks = sorted(set(markers) | set(fails))
        done = [b for b in blocks if b in markers and markers[b].get("lo") == bounds[b][0]]
        failed = [b for b in blocks if b in fails and b not in done]
        pending = [b for b in blocks if b not in done and b not in failed]
        obj_done = sum(bounds[b][1] - bounds[b][0] for b in done)
        obj_left = sum(bounds[b][1] - bounds[b][0] for b in pending + failed)
        secs = sum(sum(markers[b].get("timings", {}).values()) for b in done)
        rate = obj_done / secs if secs > 0 else None  # per worker-second
        out["jobs"][job] = {
            "blocks_done": len(done), "blocks_failed": len(failed), "blocks_pending": len(pending),
            "objects_done": obj_done, "objects_left": obj_left,
            "rate_spectra_per_worker_s": rate,
            "eta_worker_s": obj_left / rate if rate else None,
            "failures": [{"block": b, "reason": fails[b].get("reason")} for b in failed],
        }
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="progress, failures and fingerprint of a catalog")
    p.add_argument("catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main)


def main(args) -> int:
    st = catalog_status(args.catalog)
    if args.json:
        print(json.dumps(st, indent=1, default=str))
        return 0
    print(f"catalog {st['catalog']}: {st['n_objects']:,} objects in {st['n_blocks']} blocks of {st['block_objects']}")
    for job, j in st["jobs"].items():
        eta = j["eta_worker_s"]
        print(f"  job {job}: done {j['blocks_done']} blocks ({j['objects_done']:,} objects), failed {j['blocks_failed']}, "
              f"pending {j['blocks_pending']} ({j['objects_left']:,} objects left)"
              + (f"; ~{eta / 60:.1f} worker-minutes left at {j['rate_spectra_per_worker_s']:.0f} spectra/s per worker"
                 if eta else ""))
        for f in j["failures"]:
            print(f"    FAILED block {f['block']}: {f['reason']}")
    lk = st["lock"]
    if lk:
        print(f"  lock: epoch {lk.get('epoch')}, owner {lk.get('owner')}, "
              f"{'released' if lk.get('released') else 'held'}")
    fp = st["fingerprint"] or {}
    print("  fingerprint: " + ", ".join(f"{k}={v}" for k, v in fp.items()))
    for r in st["runs"]:
        print(f"  run {r.get('run_id')}: job {r.get('job')} selection {r.get('selection')} status {r.get('status')} "
              f"started {r.get('started')} blocks {r.get('blocks_computed')}")
    return 0
