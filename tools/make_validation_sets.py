#!/usr/bin/env python
"""Write the simulator's validation sets (issue 11 item 6): a held-out set and one leave-one-family-out set per
continuum family, as survey stores regenerated from seeds, plus committed truth tables and a manifest.

    nice -n 10 python tools/make_validation_sets.py --out-dir /tmp/valsets --workers 2
    nice -n 10 python tools/make_validation_sets.py --out-dir /tmp/valsets --only heldout      # one set
    python tools/make_validation_sets.py --verify /tmp/valsets/heldout.zarr                    # bytes as recorded

Sets (all with the default :class:`SimConfig` unless stated; seeds never used by training, whose defaults are
``sim_seed=1_000_000`` and ``val_seed=424242``):

``heldout``
    N = 5000, every family, seed 911000.
``lofo_<family>``
    N = 2000 galaxies drawn from that family only (``families=(family,)``), seed 912000 + family code. A model
    trained on ``train_sim_config`` (every other family; recorded in the manifest, usable as
    ``survey-infer train --sim-config``) never saw that family: its accuracy there measures generalisation to
    an unseen stellar-population model.

Outputs: ``OUT_DIR/<set>.zarr`` (the spectra; not committed: ~0.1 MB per spectrum), and in ``--truth-dir``
(default ``docs/validation_sets``, committed) ``<set>_truth.csv.gz`` (object_id and every truth column) and
``manifest.json`` (seed, N, config, SIM_VERSION, the truth table's sha256 and the sha256 of the first chunk of
flux bytes, so a regenerated store can be checked with ``--verify``). Evaluate a model on a set with
``survey-infer run`` on the store and ``survey-infer evaluate`` against its truth columns.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from survey_infer.io.simulated import simulate_survey  # noqa: E402
from survey_infer.simulate import SIM_VERSION, SimConfig  # noqa: E402
from survey_infer.simulate.simulator import FAMILIES, TRUTH_COLUMNS  # noqa: E402

CHUNK = 256


def set_specs() -> dict[str, dict]:
    """Name → {seed, n, config, train_sim_config}."""
    base = SimConfig()
    specs = {"heldout": {"seed": 911000, "n": 5000, "config": base, "train_sim_config": None}}
    for code, fam in enumerate(FAMILIES):
        others = tuple(f for f in FAMILIES if f != fam)
        specs[f"lofo_{fam}"] = {"seed": 912000 + code, "n": 2000, "config": replace(base, families=(fam,)),
                                "train_sim_config": {"families": list(others)}}
    return specs


def _flux_sha(store: Path, rows: int = CHUNK) -> str:
    from survey_infer.io.survey_store import open_survey

    ds = open_survey(store)
    f = np.ascontiguousarray(ds["flux"].values[:rows])
    return hashlib.sha256(f.tobytes()).hexdigest()


def truth_table(store: Path) -> bytes:
    """gzip'd CSV of object_id and the truth columns (fixed float formatting, reproducible bytes)."""
    from survey_infer.io.survey_store import open_survey

    ds = open_survey(store)
    cols = ["object_id"] + list(TRUTH_COLUMNS)
    arrs = [ds[c].values for c in cols]
    buf = io.StringIO()
    buf.write(",".join(cols) + "\n")
    fmt = []
    for c, a in zip(cols, arrs):
        if a.dtype.kind == "f":
            fmt.append("%.7g" if c not in ("ra", "dec") else "%.8f")
        elif a.dtype.kind == "b":
            fmt.append("%d")
        else:
            fmt.append("%d")
    for i in range(len(arrs[0])):
        buf.write(",".join((f % (int(a[i]) if a.dtype.kind == "b" else a[i])) if not (a.dtype.kind == "f" and
                           np.isnan(a[i])) else "nan" for f, a in zip(fmt, arrs)) + "\n")
    raw = buf.getvalue().encode()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw)
    return out.getvalue()


def make(out_dir: Path, truth_dir: Path, only: list[str] | None, workers: int) -> dict:
    specs = set_specs()
    truth_dir.mkdir(parents=True, exist_ok=True)
    man_path = truth_dir / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {}
    manifest.setdefault("sets", {})
    manifest["sim_version"] = SIM_VERSION
    for name, sp in specs.items():
        if only and name not in only:
            continue
        store = out_dir / f"{name}.zarr"
        t0 = time.perf_counter()
        simulate_survey(sp["n"], sp["seed"], store, config=sp["config"], chunk_objects=CHUNK, overwrite=True,
                        scheduler="processes" if workers > 1 else "synchronous", num_workers=workers)
        dt = time.perf_counter() - t0
        tt = truth_table(store)
        (truth_dir / f"{name}_truth.csv.gz").write_bytes(tt)
        manifest["sets"][name] = {
            "seed": sp["seed"], "n": sp["n"], "config": sp["config"].to_dict(), "sim_version": SIM_VERSION,
            "train_sim_config": sp["train_sim_config"], "truth_table": f"{name}_truth.csv.gz",
            "truth_sha256": hashlib.sha256(tt).hexdigest(), "flux_sha256_first_chunk": _flux_sha(store),
            "chunk_objects": CHUNK,
        }
        print(f"{name}: {sp['n']} spectra in {dt:.0f} s -> {store}; truth {len(tt) / 1e3:.0f} kB", flush=True)
    man_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify(store: Path, truth_dir: Path) -> bool:
    """Check a regenerated store against the manifest (first-chunk flux bytes and the truth table)."""
    from survey_infer.io.survey_store import open_survey

    manifest = json.loads((truth_dir / "manifest.json").read_text())
    sim = open_survey(store).attrs["simulation"]
    for name, rec in manifest["sets"].items():
        if rec["seed"] == sim["seed"] and rec["n"] == sim["n"]:
            ok_f = _flux_sha(store) == rec["flux_sha256_first_chunk"]
            ok_t = hashlib.sha256(truth_table(store)).hexdigest() == rec["truth_sha256"]
            print(f"{store}: set {name}: flux {'OK' if ok_f else 'DIFFERS'}, truth {'OK' if ok_t else 'DIFFERS'}")
            return ok_f and ok_t
    print(f"{store}: seed {sim['seed']} / n {sim['n']} is not a set of {truth_dir / 'manifest.json'}")
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/valsets"))
    ap.add_argument("--truth-dir", type=Path, default=ROOT / "docs" / "validation_sets")
    ap.add_argument("--only", nargs="*", default=None, help="set names (heldout, lofo_<family>)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--verify", type=Path, default=None, help="check a regenerated store against the manifest")
    a = ap.parse_args()
    if a.verify is not None:
        return 0 if verify(a.verify, a.truth_dir) else 1
    if a.only:
        bad = [s for s in a.only if s not in set_specs()]
        if bad:
            print(f"unknown set(s) {bad}; known: {', '.join(set_specs())}", file=sys.stderr)
            return 2
    make(a.out_dir, a.truth_dir, a.only, a.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
