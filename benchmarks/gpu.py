"""GPU: spectra/s of ``survey-infer run --cluster cuda`` sustained over ≥ 2 minutes, with its ceilings.

For the lent GPU machine (one H200, 16 CPU cores). On a machine without a CUDA GPU it skips cleanly and says so
(``--cpu-smoke`` runs the same code on the CPU with tiny sizes, to check it). Measured, each on its own:

* **GPU-compute ceiling**: the network on preprocessed spectra already on the host, as the pipeline calls it
  (``run_network`` with ``device="cuda"``: micro-batches of 32, host→device copies included) and, for
  reference, the bare trunk + T-sample head on large device-resident batches (what the GPU could do if it
  were fed without the micro-batch rule);
* **decode ceiling**: read + decode of the store by 16 processes (the CPU cores);
* **preprocess ceiling**: the numpy preprocessing on 16 processes (it runs on the workers' CPU);
* **end to end**: ``survey-infer run --cluster cuda`` on a store of ≤ 200k spectra, repeated into fresh
  catalogs until ≥ 120 s have passed; sustained spectra/s = spectra / wall time (start-up counted once per
  run, as a user pays it), plus the rate between first and last block; GPU busy fraction from
  ``nvidia-smi`` sampled every 0.5 s during the runs;
* **projection**: 10⁶ spectra = start-up + 10⁶ / sustained rate (target < 20 s), and the limiting stage.

Target (DESIGN §9): ≥ 50,000 spectra/s sustained. Writes ``benchmarks/results/gpu.json`` (read by
``capacity``) and ``gpu.png``.

Run: ``python -m benchmarks.gpu`` (on the GPU machine), ``python -m benchmarks.gpu --cpu-smoke`` (anywhere).
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import numpy as np

from . import BenchConfig, benchmark_model, cli_run, log, median, parallel_timed, row, simulated_store, standalone

TARGET = 50_000
SUSTAIN_S = 120.0


def cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False, "torch not importable"
    if not torch.cuda.is_available():
        return False, f"no CUDA GPU visible to torch {torch.__version__}"
    try:
        import dask_cuda  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"dask-cuda not usable ({exc}); pip install 'survey-infer[gpu]'"
    return True, torch.cuda.get_device_name(0)


class GpuSampler:
    """``nvidia-smi`` utilisation samples (percent) every ``period`` seconds in a background thread."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                                      "nounits"], capture_output=True, text=True, timeout=5).stdout.split("\n")[0]
                u, m = (float(x) for x in out.split(","))
                self.samples.append((time.time(), u, m))
            except Exception:  # noqa: BLE001 - no nvidia-smi: no samples
                pass
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=10)
        return False

    def busy_fraction(self, t0: float | None = None, t1: float | None = None) -> float | None:
        s = [u for t, u, _ in self.samples if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        return float(np.mean(s)) / 100 if s else None


def compute_ceiling(model_dir: str, store, n: int, T: int, device: str, seconds: float = 20.0) -> dict:
    """Network-only throughput: pipeline path (micro-batches, host arrays) and bare large device batches."""
    import torch

    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.inference import make_masks, run_network

    from .mc_cost import load_preprocessed

    model = load_model(model_dir, device=device)
    x, sc, oid = load_preprocessed(store, n, model)
    rows = np.arange(n)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    run_network(model, x[:64], sc[:64], oid[:64], rows[:64], T, 0, device)
    sync()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done == 0:
        run_network(model, x, sc, oid, rows, T, 0, device)
        done += n
    sync()
    pipe_rate = done / (time.perf_counter() - t0)
    out = {"pipeline_path_spectra_per_s": pipe_rate, "n": n}
    # bare network, big device-resident batches (no micro-batch rule, no statistics): the hardware's ceiling
    for bsz in (256, 1024):
        bsz = min(bsz, n)
        xb = torch.from_numpy(x[:bsz]).to(device)
        sb = torch.from_numpy(sc[:bsz]).to(device)
        masks = {k: v.to(device) for k, v in make_masks(model, oid[:bsz], np.ones(bsz, bool), T, 0).items()}
        with torch.inference_mode():
            tr = model.net.trunk(xb, sb)  # warm-up (kernel selection)
            model.net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
            sync()
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 4 or done == 0:
                tr = model.net.trunk(xb, sb)
                model.net.head(tr["a"], tr["ctx"], masks, tr.get("zadd"))
                done += bsz
            sync()
        out[f"bare_batch{bsz}_spectra_per_s"] = done / (time.perf_counter() - t0)
    return out


def _prep(phase, *a):
    if phase == "setup":
        model_dir, store, lo, hi = a
        import zarr

        from survey_infer.model.checkpoint import load_model

        model = load_model(model_dir)
        g = zarr.open_group(str(store), mode="r", zarr_format=3)
        return (model, g["flux"][lo:hi], g["ivar"][lo:hi])
    from survey_infer.preprocess import preprocess

    model, flux, ivar = a[0]
    for s in range(0, len(flux), 256):
        preprocess(flux[s:s + 256], ivar[s:s + 256], model.instrument, model.sky_mask)
    return {"n": len(flux)}


def preprocess_ceiling(model_dir: str, store, n: int, procs: int) -> dict:
    from . import worker_env

    edges = np.linspace(0, n, procs + 1).astype(int)
    r = parallel_timed(_prep, [(model_dir, str(store), int(edges[i]), int(edges[i + 1])) for i in range(procs)],
                       env=worker_env())
    return {"spectra_per_s": n / r["wall_s"], "procs": procs, "n": n}


def end_to_end(store, n: int, model_dir: str, cluster: str, T: int, sustain_s: float, cache) -> dict:
    runs = []
    cat = cache / "cat-gpu.zarr"
    with GpuSampler() as gs:
        t0 = time.time()
        while time.time() - t0 < sustain_s or not runs:
            r = cli_run(store, cat, model_dir, 1, T, ("--cluster", cluster))
            runs.append({"wall_s": r["wall_s"], "runner_s": r["summary"]["seconds"],
                         "timings": r["summary"]["timings"], "t_launch": r["t_launch"], "t_exit": r["t_exit"]})
            log(f"  gpu run {len(runs)}: {n / r['wall_s']:,.0f} spectra/s ({r['wall_s']:.1f} s)")
        total = time.time() - t0
    shutil.rmtree(cat, ignore_errors=True)
    sustained = n * len(runs) / sum(r["wall_s"] for r in runs)
    st: dict = {}
    for r in runs:
        for k, v in r["timings"].items():
            st[k] = st.get(k, 0.0) + v
    return {"runs": runs, "sustained_spectra_per_s": sustained, "sustained_over_s": total, "n_per_run": n,
            "startup_s": median([r["wall_s"] - r["runner_s"] for r in runs]),
            "gpu_busy_fraction": gs.busy_fraction(), "stage_s_total": st,
            "gpu_util_samples": len(gs.samples)}


def run(cfg: BenchConfig, state: dict) -> dict:
    smoke = bool(cfg.options.get("cpu_smoke"))
    ok, why = cuda_available()
    if not ok and not smoke:
        log(f"  gpu: skipped ({why})")
        res = {"skipped": why}
        state["gpu"] = res
        return {"rows": [row("5 GPU", "sustained spectra/s, one H200, --cluster cuda", None, "", f"≥ {TARGET:,}",
                             None, f"skipped: {why}; run `python -m benchmarks.gpu` on the GPU machine")],
                "details": res}
    device = "cuda" if ok else "cpu"
    cluster = "cuda" if ok else "local"
    n = int(cfg.options.get("n") or (200_000 if ok else 600))
    procs = int(cfg.options.get("procs") or (16 if ok else cfg.workers))
    sustain = float(cfg.options.get("sustain_s") or (SUSTAIN_S if ok else 1.0))
    mdir, kind = benchmark_model(cfg)
    store = simulated_store(cfg, n, seed=cfg.seed + 7, chunk_objects=1024 if ok else 256, workers=procs)
    from .io_limit import io_ceiling

    comp = compute_ceiling(mdir, store, min(n, 4096), cfg.mc_samples, device, seconds=20.0 if ok else 1.0)
    io_ceiling(store, n, procs, cold=False)
    dec = io_ceiling(store, n, procs, cold=False)
    prep = preprocess_ceiling(mdir, store, min(n, 32768), procs)
    e2e = end_to_end(store, n, mdir, cluster, cfg.mc_samples, sustain, cfg.cache)
    proj = e2e["startup_s"] + 1e6 / e2e["sustained_spectra_per_s"]
    ceilings = {"GPU compute (pipeline path)": comp["pipeline_path_spectra_per_s"],
                f"decode ({procs} procs)": dec["spectra_per_s"],
                f"preprocess ({procs} procs)": prep["spectra_per_s"]}
    limit = min(ceilings, key=ceilings.get)
    res = {"device": why if ok else "cpu (smoke)", "model_kind": kind, "n": n, "compute": comp, "decode": dec,
           "preprocess": prep, "end_to_end": e2e, "projection_1e6_s": proj, "ceilings": ceilings,
           "limiting_ceiling": limit, "smoke": smoke and not ok}
    state["gpu"] = res
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = list(ceilings) + ["end to end (sustained)"]
        vals = list(ceilings.values()) + [e2e["sustained_spectra_per_s"]]
        ax.barh(names, vals)
        ax.axvline(TARGET, color="r", ls="--", label=f"target {TARGET:,}/s")
        ax.set_xlabel("spectra/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(cfg.out / ("gpu.png" if ok else "gpu-smoke.png"), dpi=90)
        plt.close(fig)
    except Exception as exc:  # noqa: BLE001
        log(f"  gpu plot failed: {exc}")
    tag = "" if ok else " [CPU SMOKE TEST: not a GPU figure]"
    sus = e2e["sustained_spectra_per_s"]
    rows = [
        row("5 GPU", f"sustained spectra/s, --cluster {cluster}, {e2e['sustained_over_s']:.0f} s", sus, "spectra/s",
            f"≥ {TARGET:,}", (sus >= TARGET) if ok else None,
            "GPU busy " + (f"{e2e['gpu_busy_fraction']:.0%}" if e2e["gpu_busy_fraction"] is not None else "n/a") + "; "
            f"limit: {limit}{tag}"),
        row("5 GPU", "ceilings: GPU compute / decode / preprocess", None, "", "", None,
            " / ".join(f"{v:,.0f}" for v in ceilings.values()) + f" spectra/s; bare network "
            f"{comp.get('bare_batch1024_spectra_per_s', comp.get('bare_batch256_spectra_per_s', 0)):,.0f}/s" + tag),
        row("5 GPU", "projection: 10⁶ spectra", proj, "s", "< 20 s", (proj < 20) if ok else None,
            f"start-up {e2e['startup_s']:.1f} s + 10⁶ / sustained rate" + tag),
    ]
    return {"rows": rows, "details": res}


def _args(p):
    p.add_argument("--cpu-smoke", action="store_true", help="run the code path on the CPU with tiny sizes")
    p.add_argument("--n", type=int, default=None, help="spectra in the GPU store (200,000)")
    p.add_argument("--procs", type=int, default=None, help="CPU processes for the decode/preprocess ceilings (16)")
    p.add_argument("--sustain-s", type=float, default=None, help="seconds of end-to-end runs (120)")


def main(argv=None) -> int:
    return standalone(run, __doc__.split("\n\n")[0], argv, _args)


if __name__ == "__main__":
    raise SystemExit(main())
