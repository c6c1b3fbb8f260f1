"""I/O limit: how fast the survey store can be read and decoded, and how close the pipeline gets to that.

* **Codecs**: the same spectra (flux + ivar, chunks of 256 whole spectra as the store writes them) stored with
  Blosc-LZ4 + byte shuffle (the store's codec), Blosc-Zstd + shuffle, no compression, and float16 versions;
  on-disk size, write time, and read + decode MB/s and spectra/s in one process, warm (page cache) and cold
  (``drop_caches``, root only; skipped otherwise). MB/s are decoded float32-equivalent bytes (8 B per channel
  for flux + ivar), so codecs and dtypes compare on spectra delivered.
* **float16 harmless?** The network's outputs for float32 inputs and for the same inputs rounded to float16
  (z, p_outside, quality, z_reliable, the PDF), plus how many values float16 cannot hold (overflow /
  underflow of ivar and flux).
* **I/O ceiling**: read + decode of the benchmark store (flux, ivar, object_id in the workers' 1,024-row
  reads) by as many processes as the pipeline has workers — the most any pipeline can deliver from this store.
* **Trivial-model pipeline**: ``survey-infer run`` with a near-zero-cost network run deterministically
  (T = 1, ``--seed -1``: no dropout masks, no MC statistics); its spectra/s as a fraction of the I/O ceiling
  shows what the pipeline costs besides the network (start-up, preprocessing, screening, writes, scheduling).

Run alone: ``python -m benchmarks.io_limit``.
"""
from __future__ import annotations

import os
import shutil
import time

import numpy as np

from . import (BenchConfig, Quiet, benchmark_model, cli_run, drop_caches, log, median, parallel_timed, row,
               simulated_store, standalone, trivial_model)

SUB_ROWS = 1024  # the workers' read size (survey_infer.pipeline.worker.SUB_ROWS)


def codecs() -> dict[str, tuple[str, list]]:
    """Variant name → (dtype, zarr v3 compressors)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    from survey_infer.io.survey_store import spectrum_codec

    return {
        "lz4+shuffle f32 (store)": ("float32", spectrum_codec()),
        "zstd+shuffle f32": ("float32", [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]),
        "zstd f32 (plain)": ("float32", [ZstdCodec(level=3)]),
        "none f32": ("float32", []),
        "lz4+shuffle f16": ("float16", [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]),
        "zstd+shuffle f16": ("float16", [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]),
    }


def write_variant(path, flux, ivar, dtype, compressors, chunk: int = 256) -> float:
    import zarr

    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, a in (("flux", flux), ("ivar", ivar)):
        arr = g.create_array(name, shape=a.shape, chunks=(chunk, a.shape[1]), dtype=dtype, compressors=compressors,
                             fill_value=0)
        arr[:] = a.astype(dtype)
    return time.perf_counter() - t0


def read_all(path, n: int) -> float:
    """Seconds to read and decode flux + ivar rows [0, n) in the workers' read size, as float32."""
    import zarr

    t0 = time.perf_counter()
    g = zarr.open_group(str(path), mode="r", zarr_format=3)
    for s in range(0, n, SUB_ROWS):
        e = min(n, s + SUB_ROWS)
        f = g["flux"][s:e]
        iv = g["ivar"][s:e]
        if f.dtype != np.float32:
            f, iv = f.astype(np.float32), iv.astype(np.float32)
    return time.perf_counter() - t0


def disk_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _reader(phase, *a):
    """parallel_timed body: read + decode rows [lo, hi) of a survey store like a worker does."""
    import zarr

    if phase == "setup":
        store, lo, hi = a
        g = zarr.open_group(str(store), mode="r", zarr_format=3)
        g["object_id"][lo:lo + 1], g["flux"].metadata, g["ivar"].metadata  # metadata loaded before the clock
        return (g, lo, hi)
    g, lo, hi = a[0]
    nbytes = 0
    for s in range(lo, hi, SUB_ROWS):
        e = min(hi, s + SUB_ROWS)
        f, iv, oid = g["flux"][s:e], g["ivar"][s:e], g["object_id"][s:e]
        nbytes += f.nbytes + iv.nbytes + oid.nbytes
    return {"n": hi - lo, "bytes": nbytes}


def io_ceiling(store, n: int, procs: int, cold: bool) -> dict:
    """Read + decode of the whole store by ``procs`` processes (contiguous shares, as blocks are)."""
    edges = np.linspace(0, n, procs + 1).astype(int)
    if cold and not drop_caches():
        return {"skipped": "cannot drop caches (not root)"}
    r = parallel_timed(_reader, [(str(store), int(edges[i]), int(edges[i + 1])) for i in range(procs)])
    nbytes = sum(p["bytes"] for p in r["per_process"])
    return {"wall_s": r["wall_s"], "spectra_per_s": n / r["wall_s"], "MB_per_s": nbytes / 1e6 / r["wall_s"],
            "procs": procs, "cold": cold}


def float16_check(model, flux, ivar, oid, T: int) -> dict:
    """Network outputs for float32 inputs vs the same inputs rounded to float16."""
    import torch

    from survey_infer.model.inference import infer_block

    torch.set_num_threads(1)
    f16max = float(np.finfo(np.float16).max)
    f16tiny = float(np.finfo(np.float16).smallest_subnormal)
    good = ivar > 0
    over = float(((np.abs(ivar) > f16max) | (np.abs(flux) > f16max)).mean())
    under = float((((np.abs(ivar) < f16tiny) & good) | ((np.abs(flux) < f16tiny) & (flux != 0))).mean())
    a = infer_block(model, flux, ivar, oid, 0, mc_samples=T, seed=0)
    with np.errstate(over="ignore"):
        f16, iv16 = flux.astype(np.float16).astype(np.float32), ivar.astype(np.float16).astype(np.float32)
    b = infer_block(model, f16, iv16, oid, 0, mc_samples=T, seed=0)
    dz = np.abs(a["z"] - b["z"])
    ok = np.isfinite(dz)
    return {"n": len(flux), "ivar_or_flux_overflow_fraction": over, "underflow_fraction": under,
            "ivar_range": [float(ivar[good].min()), float(ivar[good].max())] if good.any() else None,
            "abs_flux_range": [float(np.abs(flux[flux != 0]).min()), float(np.abs(flux).max())],
            "max_abs_dz": float(dz[ok].max()) if ok.any() else None,
            "median_abs_dz": float(np.median(dz[ok])) if ok.any() else None,
            "frac_dz_gt_0.001": float((dz[ok] > 1e-3).mean()) if ok.any() else None,
            "frac_dz_gt_0.01": float((dz[ok] > 1e-2).mean()) if ok.any() else None,
            "nan_mismatch": int((np.isnan(a["z"]) != np.isnan(b["z"])).sum()),
            "max_abs_dp_outside": float(np.nanmax(np.abs(a["p_outside"] - b["p_outside"]))),
            "max_abs_dquality": float(np.nanmax(np.abs(a["quality"] - b["quality"]))),
            "z_reliable_changed": int((a["z_reliable"] != b["z_reliable"]).sum()),
            "max_pdf_l1": float(np.nanmax(np.abs(a["pz"].astype(np.float64) - b["pz"]).sum(1)))}


def run(cfg: BenchConfig, state: dict) -> dict:
    from survey_infer.model.checkpoint import load_model

    store = simulated_store(cfg, cfg.n_store)
    n_codec = 256 if cfg.quick else int(cfg.options.get("n_codec") or 2048)
    n_f16 = 64 if cfg.quick else int(cfg.options.get("n_f16") or 512)
    import zarr

    g = zarr.open_group(str(store), mode="r", zarr_format=3)
    flux, ivar, oid = g["flux"][:n_codec], g["ivar"][:n_codec], g["object_id"][:n_codec]
    raw = flux.nbytes + ivar.nbytes  # float32-equivalent bytes
    work = cfg.cache / "io"
    work.mkdir(parents=True, exist_ok=True)
    variants = {}
    can_cold = not cfg.quick and not cfg.options.get("no_cold")
    for name, (dtype, comp) in codecs().items():
        path = work / ("v-" + "".join(c if c.isalnum() else "_" for c in name) + ".zarr")
        t_write = write_variant(path, flux, ivar, dtype, comp)
        os.sync()  # no write-back of the new files during the read timings
        read_all(path, n_codec)  # warm the cache
        warm = []
        with Quiet(cfg, f"io {name}") as q:
            for _ in range(max(5, cfg.repeats)):
                warm.append(read_all(path, n_codec))
        cold = []
        for _ in range(1 if cfg.quick else 2):
            if can_cold and drop_caches():
                cold.append(read_all(path, n_codec))
            else:
                can_cold = False
        v = {"dtype": dtype, "disk_MB": disk_bytes(path) / 1e6, "raw_MB": raw / 1e6, "write_s": t_write,
             "warm_read_s": warm, "cold_read_s": cold, "quiet": q.record}
        v["ratio"] = v["raw_MB"] / v["disk_MB"]
        v["warm_MB_per_s"] = raw / 1e6 / median(warm)
        v["warm_spectra_per_s"] = n_codec / median(warm)
        if cold:
            v["cold_MB_per_s"] = raw / 1e6 / median(cold)
            v["cold_spectra_per_s"] = n_codec / median(cold)
        variants[name] = v
        log(f"  io {name:24s} {v['ratio']:.2f}x  warm {v['warm_MB_per_s']:,.0f} MB/s"
            + (f"  cold {v['cold_MB_per_s']:,.0f} MB/s" if cold else ""))
        shutil.rmtree(path, ignore_errors=True)

    # float16: harmless for the network's outputs?
    mdir, kind = benchmark_model(cfg)
    model = load_model(mdir)
    f16 = float16_check(model, flux[:n_f16], ivar[:n_f16], oid[:n_f16], cfg.mc_samples)

    # the I/O ceiling with the pipeline's process count, warm and cold
    n_all = int(g["flux"].shape[0])
    ceil = {}
    with Quiet(cfg, "io ceiling") as q:
        io_ceiling(store, n_all, cfg.workers, cold=False)  # warm the cache
        ceil["warm"] = [io_ceiling(store, n_all, cfg.workers, cold=False) for _ in range(max(2, cfg.repeats))]
    ceil["cold"] = [io_ceiling(store, n_all, cfg.workers, cold=True) for _ in range(2 if can_cold else 0)]
    ceil["quiet"] = q.record
    warm_rate = median([c["spectra_per_s"] for c in ceil["warm"]])
    cold_ok = [c for c in ceil["cold"] if "spectra_per_s" in c]
    cold_rate = median([c["spectra_per_s"] for c in cold_ok]) if cold_ok else None
    io_limit = {"warm_spectra_per_s": warm_rate, "cold_spectra_per_s": cold_rate,
                "warm_MB_per_s": median([c["MB_per_s"] for c in ceil["warm"]]),
                "cold_MB_per_s": median([c["MB_per_s"] for c in cold_ok]) if cold_ok else None}
    state["io_ceiling"] = io_limit

    # the pipeline with a trivial model
    tmodel = trivial_model(cfg)
    triv = []
    for _ in range(cfg.repeats if not cfg.quick else 1):
        with Quiet(cfg, "trivial pipeline") as q:
            r = cli_run(store, cfg.cache / "cat-trivial.zarr", tmodel, cfg.workers, 1, ("--seed", "-1"))
        r["quiet"] = q.record
        r["spectra_per_s_wall"] = n_all / r["wall_s"]
        r["spectra_per_s_runner"] = r["summary"]["spectra_per_s"]
        triv.append(r)
    shutil.rmtree(cfg.cache / "cat-trivial.zarr", ignore_errors=True)
    triv_wall = median([r["spectra_per_s_wall"] for r in triv])
    triv_runner = median([r["spectra_per_s_runner"] for r in triv])
    st = triv[len(triv) // 2]["summary"]["timings"]
    busy_total = sum(st.values())
    stage_frac = {k: v / busy_total for k, v in st.items()}

    res = {"n_codec": n_codec, "variants": variants, "float16": f16, "io_ceiling": ceil, "io_limit": io_limit,
           "trivial_pipeline": triv, "trivial_stage_fraction": stage_frac, "model_kind": kind}
    state["io_limit"] = res
    store_v = variants["lz4+shuffle f32 (store)"]
    best = max(variants, key=lambda k: variants[k]["warm_spectra_per_s"])
    rows = [
        row("4 I/O", "store codec lz4+shuffle f32: read+decode, warm, 1 proc", store_v["warm_MB_per_s"], "MB/s", "",
            None, f"{store_v['warm_spectra_per_s']:,.0f} spectra/s; {store_v['ratio']:.2f}× compression"
            + (f"; cold {store_v['cold_MB_per_s']:,.0f} MB/s" if "cold_MB_per_s" in store_v else "; cold: n/a")),
        row("4 I/O", f"fastest variant: {best}", variants[best]["warm_MB_per_s"], "MB/s", "", None,
            f"{variants[best]['warm_spectra_per_s']:,.0f} spectra/s; {variants[best]['ratio']:.2f}× compression"),
        row("4 I/O", f"I/O ceiling, read+decode, {cfg.workers} procs, warm", warm_rate, "spectra/s", "", None,
            f"{io_limit['warm_MB_per_s']:,.0f} MB/s" + (f"; cold {cold_rate:,.0f} spectra/s "
                                                         f"({io_limit['cold_MB_per_s']:,.0f} MB/s)" if cold_rate else "")),
        row("4 I/O", "float16 inputs: max |Δz| vs float32", f16["max_abs_dz"], "", "", None,
            f"{f16['frac_dz_gt_0.001']:.1%} of {f16['n']} moved > 0.001; z_reliable changed for "
            f"{f16['z_reliable_changed']}; overflow {f16['ivar_or_flux_overflow_fraction']:.1e} of values "
            f"({kind})"),
        row("4 I/O", "pipeline with trivial model / I/O ceiling (warm)", triv_wall / warm_rate, "", "", None,
            f"{triv_wall:,.0f} spectra/s incl. start-up ({triv_runner:,.0f} by the runner's clock); busy time: "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(stage_frac.items(), key=lambda x: -x[1]))),
    ]
    return {"rows": rows, "details": res}


def _args(p):
    p.add_argument("--n-codec", type=int, default=None, help="spectra per codec variant (2048)")
    p.add_argument("--n-f16", type=int, default=None, help="spectra for the float16 check (512)")
    p.add_argument("--no-cold", action="store_true", help="skip cold-cache reads (no drop_caches)")


def main(argv=None) -> int:
    return standalone(run, __doc__.split("\n\n")[0], argv, _args)


if __name__ == "__main__":
    raise SystemExit(main())
