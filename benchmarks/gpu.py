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

**The device check** (``benchmarks/gpu_check.sh`` = ``python -m benchmarks.gpu --check``; issue 15 point 6) is
the short, staged version for a bare, lent H200 machine: every stage runs in its own process under a time box
(the whole within :data:`CHECK_BUDGET_S`), writes its record when it ends (or a ``timeout`` /
``failed`` record), and ``$OUT/gpu.json`` is rewritten after every stage, so a run cut short still returns what
it measured. ``--device cpu --n 64`` is its dry run (CI, ``tests/test_gpu.py``). See :func:`check_main`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import numpy as np

from . import (
    BenchConfig,
    benchmark_model,
    cli_run,
    log,
    median,
    parallel_timed,
    row,
    simulated_store,
    standalone,
)

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
    import sys as _sys

    argv = list(_sys.argv[1:] if argv is None else argv)
    if "--check" in argv or "--stage" in argv:
        return check_main(argv)
    if "--cpu-compare" in argv:  # issue 15 point 7
        import os

        from . import RESULTS

        runs = []
        for i in range(3):  # three separate runs (each a median of 5 interleaved repeats); their median reported
            up0 = os.getloadavg()
            r = cpu_compare()
            r["uptime_load_before_after"] = [list(up0), list(os.getloadavg())]
            runs.append(r)
            log(f"  cpu-compare run {i + 1}/3 done (load {up0[0]:.1f})")
        res = dict(runs[-1])
        res["runs"] = [{k: r[k] for k in ("core_ms_per_spectrum", "foreign_cpu_cores_median",
                                          "uptime_load_before_after")} for r in runs]
        res["core_ms_per_spectrum"] = {
            k: {p: median([r["core_ms_per_spectrum"][k][p] for r in runs]) for p in ("numpy", "torch")}
            for k in runs[0]["core_ms_per_spectrum"]}
        for v in res["core_ms_per_spectrum"].values():
            v["torch_over_numpy"] = v["torch"] / v["numpy"]
        res["window_outputs_bit_identical"] = all(r["window_outputs_bit_identical"] for r in runs)
        res["screening_outputs_bit_identical"] = all(r["screening_outputs_bit_identical"] for r in runs)
        res["statistic"] = "median over 3 runs of each run's median of 5 interleaved repeats"
        res.pop("core_ms_per_spectrum_all_runs", None)
        _write_json(RESULTS / "gpu-cpu-compare.json", res)
        print(json.dumps({k: res[k] for k in ("core_ms_per_spectrum", "window_outputs_bit_identical",
                                              "screening_outputs_bit_identical", "runs")}, indent=1))
        return 0
    return standalone(run, __doc__.split("\n\n")[0], argv, _args)



# ================================================================================================ device check
#: seconds for the stages (gpu_check.sh passes what is left of its 8 minutes after installing: ≤ 470 s)
CHECK_BUDGET_S = 460.0
#: stage name → time box (s) on a GPU, in the order they run: the headline figure (end to end) right after the
#: store it needs, then the ceilings, the GPU tests last (a cut-short try still has the most important figures).
#: Sum 405 s; the dry run uses the same boxes (it finishes far inside them).
STAGES: dict[str, float] = {"env": 25, "store": 60, "end_to_end": 110, "network": 50, "screening": 35,
                            "preprocess": 25, "decode": 20, "pytest": 80}
#: a stage is not started with less than this many seconds of the budget left
MIN_STAGE_S = 5.0


def _write_json(path, obj) -> None:
    import json
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
    os.replace(tmp, path)


def _read_json(path) -> dict:
    import json

    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _check_args(argv):
    import argparse
    import os
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu --check",
                                description="Staged, time-boxed GPU check (issue 15); results under --out.")
    p.add_argument("--check", action="store_true", help="run every stage (each in its own process)")
    p.add_argument("--stage", choices=list(STAGES), help="run one stage in this process (used by --check)")
    p.add_argument("--device", default="cuda", help="cuda (the H200) or cpu (the dry run)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="results folder ($OUT)")
    p.add_argument("--cache", default=None, help="scratch folder for the store and catalogs (not under --out)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=None, help="spectra in the end-to-end store (65,536 on cuda)")
    p.add_argument("--n-base", type=int, default=None, help="spectra simulated, then tiled to --n (8,192 on cuda)")
    p.add_argument("--T", type=int, default=50, help="MC samples (50)")
    p.add_argument("--procs", type=int, default=None, help="CPU processes for the ceilings (16 on cuda, else 1)")
    p.add_argument("--sustain-s", type=float, default=None, help="seconds of repeated end-to-end runs (80 on cuda)")
    p.add_argument("--budget-s", type=float, default=CHECK_BUDGET_S, help="the whole check's time box")
    p.add_argument("--box", action="append", default=[], metavar="STAGE=SECONDS",
                   help="override one stage's time box (repeatable)")
    p.add_argument("--stage-box", type=float, default=None, help=argparse.SUPPRESS)  # set by --check
    p.add_argument("--with-pytest", action="store_true", help="run the pytest stage on cpu too (off in the dry run)")
    p.add_argument("--base", default=None, help="an existing survey store to tile from instead of simulating")
    p.add_argument("--cluster", default=None, help="end-to-end --cluster (cuda on a GPU; inprocess in the dry run)")
    p.add_argument("--results", action="store_true", help="also write benchmarks/results/gpu.json (device runs)")
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    a.n = a.n or (65_536 if gpu else 64)
    a.n_base = min(a.n, a.n_base or (8192 if gpu else 64))
    a.n_requested, a.n_base_requested = a.n, a.n_base
    a.procs = a.procs or (16 if gpu else 1)
    a.sustain_s = 80.0 if a.sustain_s is None and gpu else (a.sustain_s or 0.0)
    a.boxes = dict(STAGES)
    for spec in a.box:
        name, _, sec = spec.partition("=")
        if name not in STAGES:
            p.error(f"--box {spec}: unknown stage {name!r} (stages: {', '.join(STAGES)})")
        try:
            a.boxes[name] = float(sec)
        except ValueError:
            p.error(f"--box {spec}: SECONDS must be a number")
    a.cluster = a.cluster or ("cuda" if gpu else "inprocess")
    a.out = Path(a.out).resolve()
    a.cache = Path(a.cache or (Path(os.environ.get("TMPDIR", "/tmp")) / "survey-infer-gpu-check")).resolve()
    return a


def _store_path(a):
    return a.cache / f"check-store-n{a.n_requested}-b{a.n_base_requested}.zarr"


def _store_rows(a) -> int | None:
    """Rows the check's store really holds (``n_objects``: the store stage may stop tiling early), or None."""
    try:
        with open(_store_path(a) / "zarr.json") as fh:
            return int(json.load(fh)["attributes"]["n_objects"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _model_dir(a) -> str:
    from survey_infer.model.checkpoint import resolve_model_dir

    return str(resolve_model_dir(a.model or "default"))


def check_main(argv) -> int:
    """``--check``: run the stages in order, each in a subprocess under its time box; ``--stage X``: one stage.

    ``<out>`` receives few files, because the device tool returns at most 8: ``gpu.json`` (every stage's record
    — ``status`` ok / failed / timeout / skipped, ``seconds``, the stage's figures —, the ceilings, which binds,
    the target, the install record), rewritten after each stage; ``stage-current.json`` (the running stage's
    partial record, saved as it goes: a check cut short still returns it); ``check.log`` (one line per stage);
    beside ``install.json``, ``image.txt`` and ``pip.log`` from ``gpu_check.sh``. Each stage's own record is also
    kept in ``<cache>/stages/``. Returns 0 when every stage that ran is ok.
    """
    import sys

    a = _check_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    a.cache.mkdir(parents=True, exist_ok=True)
    (a.cache / "stages").mkdir(exist_ok=True)
    if a.stage:
        return _run_stage(a)
    _kill_groups_on_term()
    t_start = time.time()
    base = [x for x in argv if x != "--check"]
    summary: dict = {"target_spectra_per_s": TARGET, "device": a.device, "n": a.n, "T": a.T, "stages": {}}
    install = _read_json(a.out / "install.json")
    if install:
        summary["install"] = install
    try:
        summary["image"] = dict(ln.split(" ", 1) for ln in (a.out / "image.txt").read_text().splitlines() if " " in ln)
    except OSError:
        pass

    def say(msg: str) -> None:
        log(msg)
        with open(a.out / "check.log", "a") as fh:
            fh.write(msg + "\n")

    rc = 0
    for name, box in a.boxes.items():
        left = a.budget_s - (time.time() - t_start)
        out_json = _stage_file(a, name)
        out_json.unlink(missing_ok=True)  # never read a record left by an earlier check
        if name == "pytest" and not a.device.startswith("cuda") and not a.with_pytest:
            rec = {"status": "skipped", "why": "dry run (--device cpu): the gpu tests skip without a GPU"}
        elif left < MIN_STAGE_S:
            rec = {"status": "skipped", "why": f"check budget {a.budget_s:.0f} s spent"}
        else:
            limit = min(box, left)
            t0 = time.time()
            say(f"stage {name} (box {limit:.0f} s)")
            code, stdout, stderr, timed_out = _run_in_group(
                [sys.executable, "-m", "benchmarks.gpu", *base, "--stage", name, "--stage-box", f"{limit:.1f}"],
                limit)
            rec = _read_json(out_json) or {"status": "failed", "why": "the stage wrote no result"}
            if timed_out:
                rec.update(status="timeout", why=f"stage ran past its {limit:.0f} s box (killed with its children)")
            elif code != 0 and rec.get("status") in ("ok", "running"):
                rec["status"] = "failed"
            if code != 0:
                rec.setdefault("why", (stderr or stdout)[-1500:])
                rec["stderr_tail"] = (stderr or "")[-1500:]
            rec["seconds"] = round(time.time() - t0, 2)
        if rec.get("status") not in ("ok", "skipped"):
            rc = 1
        _write_json(out_json, rec)
        summary["stages"][name] = rec
        summary.update(_ceilings(summary["stages"]))
        summary["elapsed_s"] = round(time.time() - t_start, 1)
        _write_json(a.out / "gpu.json", summary)
        why_lines = str(rec.get("why") or "").strip().splitlines()
        why = f": {why_lines[-1][:200]}" if rec.get("status") != "ok" and why_lines else ""
        say(f"gpu-check stage {name}: {str(rec.get('status')).upper()} in {rec.get('seconds', 0):.1f} s{why}")
    (a.out / "stage-current.json").unlink(missing_ok=True)  # every record is in gpu.json
    if a.results:
        from . import RESULTS

        _write_json(RESULTS / "gpu.json", summary)
    print(json.dumps({k: summary.get(k) for k in ("ceilings", "limiting_ceiling", "sustained_spectra_per_s",
                                                    "elapsed_s")}, default=str))
    return rc


def _run_in_group(cmd: list[str], limit_s: float) -> tuple[int | None, str, str, bool]:
    """Run ``cmd`` in its own process group for at most ``limit_s``; on time-out kill the whole group (the
    stage's Dask workers, pytest, pool processes too: a plain ``subprocess.run`` timeout kills only the child
    and then waits for grandchildren that still hold its pipes). Returns (exit code, stdout, stderr, timed out).
    """
    import os
    import signal
    import subprocess

    # SIGTERM/SIGINT held back until the group is registered: a stop arriving while Popen runs would otherwise
    # find no group to kill and leave the stage running (the child gets the caller's mask back before exec)
    held = {signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, old_mask))
        _GROUPS.add(p.pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        out, err = p.communicate(timeout=max(0.1, limit_s))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a process left the group and holds the pipes: stop waiting
            out, err = "", ""
    if p.returncode is None or p.poll() is None:  # pragma: no cover - defensive
        p.kill()
    try:  # the stage's own children outlive a normal exit only by mistake: do not let them run on
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _GROUPS.discard(p.pid)
    return p.returncode, out or "", err or "", timed_out


#: process groups started by :func:`_run_in_group` and still running (killed when the check itself is stopped)
_GROUPS: set[int] = set()


def _kill_groups_on_term() -> None:
    """SIGTERM / SIGINT to the check (``timeout`` in gpu_check.sh): kill the running stage's process group too
    (it runs in its own session, which ``timeout`` does not reach), then exit with 124."""
    import os
    import signal

    def handler(signum, frame):
        for pid in list(_GROUPS):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _ceilings(stages: dict) -> dict:
    """Ceilings (spectra/s) measured so far, the one that binds, and the end-to-end rate beside them."""
    c = {}
    dec = stages.get("decode", {})
    if dec.get("spectra_per_s"):
        c[f"decode + CRC ({dec.get('procs')} procs)"] = dec["spectra_per_s"]
    pre = stages.get("preprocess", {})
    if pre.get("device_spectra_per_s"):  # the GPU path preprocesses on the device
        c["preprocess, torch on the device"] = pre["device_spectra_per_s"]
    elif pre.get("spectra_per_s"):
        c[f"preprocess, numpy ({pre.get('procs')} procs)"] = pre["spectra_per_s"]
    net = stages.get("network", {})
    if net.get("hotpath_spectra_per_s"):
        c[f"network hot path (B={net.get('micro_batch')})"] = net["hotpath_spectra_per_s"]
    scr = stages.get("screening", {})
    if scr.get("device_spectra_per_s"):
        c["screening, torch on the device"] = scr["device_spectra_per_s"]
    out: dict = {"ceilings": c, "limiting_ceiling": min(c, key=c.get) if c else None}
    if scr.get("window_spectra_per_s"):
        out["device_window_one_thread_spectra_per_s"] = scr["window_spectra_per_s"]
    e2e = stages.get("end_to_end", {})
    if e2e.get("sustained_spectra_per_s"):
        sus = e2e["sustained_spectra_per_s"]
        out["sustained_spectra_per_s"] = sus
        out["meets_target"] = sus >= TARGET
        busy = (net.get("hotpath_busy") or {}).get("kernel_s")
        if busy and net.get("n"):
            # kernel seconds per spectrum (profiler, network stage) × spectra/s sustained = GPU kernel-busy share
            out["gpu_kernel_busy_fraction_est"] = busy / net["n"] * sus
    return out


def _stage_file(a, name: str):
    """Where stage ``name`` keeps its record (outside ``--out``: the device tool returns at most 8 files)."""
    return a.cache / "stages" / f"stage-{name}.json"


def _run_stage(a) -> int:
    out_json = _stage_file(a, a.stage)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rec: dict = {"status": "running", "stage": a.stage}

    def save(**kw):  # partial results survive a time-out (also in $OUT/stage-current.json)
        rec.update(kw)
        _write_json(out_json, rec)
        _write_json(a.out / "stage-current.json", rec)

    save()

    if a.stage not in ("env", "store") and _store_rows(a):  # the rows the store stage managed to tile
        a.n = min(a.n, _store_rows(a))

    try:
        globals()[f"_stage_{a.stage}"](a, save)
        rec["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, the check goes on with the next stage
        import traceback

        rec.update(status="failed", why=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
    rec["seconds"] = round(time.time() - t0, 2)
    save()
    return 0 if rec["status"] == "ok" else 1


# ---- stages ---------------------------------------------------------------------------------------------------
def _stage_env(a, save) -> None:
    """What ran: hardware and numerics record of the device, library versions, CUDA env."""
    import os
    import platform
    from importlib import metadata

    import torch

    from survey_infer.model.device import (
        configure_numerics,
        fingerprint_fields,
        gpu_fingerprint,
    )

    vers = {}
    for name in ("torch", "numpy", "dask", "distributed", "dask-cuda", "zarr", "numcodecs", "astropy", "xarray",
                 "cuda-core", "cuda-bindings", "nvidia-ml-py", "pynvml"):
        try:
            vers[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            vers[name] = None
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA GPU")
    save(numerics=configure_numerics(a.device), fingerprint=fingerprint_fields(a.device),
         gpu_fingerprint=gpu_fingerprint(a.device), versions=vers,
         python=platform.python_version(), cpus=os.cpu_count(),
         cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
         installed_from_wheels=os.environ.get("GPU_CHECK_INSTALLED", ""))


def _stage_pytest(a, save) -> None:
    """``pytest -m gpu``: every GPU-marked test of the suite (``tests/test_gpu.py``)."""
    import sys
    from pathlib import Path

    # only the files that hold gpu-marked tests: collecting the whole suite costs ~20 s of the box
    files = sorted(str(f) for f in Path("tests").glob("test_*.py") if "mark.gpu" in f.read_text())
    limit = (a.stage_box or 600.0) - 5.0
    code, out, err, timed_out = _run_in_group([sys.executable, "-m", "pytest", "-q", "-rfEs", "-m", "gpu", "-p",
                                               "no:cacheprovider", "-o", "addopts=", *files], limit)
    lines = out.strip().splitlines()
    tail = lines[-1] if lines else ""
    save(returncode=code, files=files, summary=tail, output_tail=out[-3000:], stderr_tail=err[-1000:],
         passed_lines=[ln for ln in lines if ln.startswith(("PASSED", "FAILED", "ERROR", "SKIPPED"))][-40:])
    if timed_out:
        raise RuntimeError(f"pytest -m gpu ran past {limit:.0f} s (killed); last line: {tail}")
    if code != 0:
        raise RuntimeError(f"pytest -m gpu: {tail}")


def _tile_part(args) -> int:
    """Process-pool body: copy base rows into rows [lo, hi) of the store with fresh object ids."""
    import zarr

    base, dst, lo, hi, n_base = args
    gb = zarr.open_group(str(base), mode="r", zarr_format=3)
    gd = zarr.open_group(str(dst), mode="r+", zarr_format=3, use_consolidated=False)
    names = [k for k in gd.array_keys() if gd[k].metadata.dimension_names
             and gd[k].metadata.dimension_names[0] == "object"]
    cache = {k: gb[k][:] for k in names}
    for s in range(lo, hi, 1024):
        e = min(hi, s + 1024)
        src = np.arange(s, e) % n_base
        for k in names:
            v = cache[k][src]
            if k == "object_id":
                v = np.arange(s, e, dtype=np.int64) + 10_000_000_000
            gd[k][s:e] = v
    return hi - lo


def _stage_store(a, save) -> None:
    """A store of ``n`` spectra: ``n_base`` simulated (16 processes), then tiled with fresh ids (chunk-aligned)."""
    import shutil
    import subprocess
    import sys
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    import zarr

    from survey_infer.io.survey_store import create_survey, store_instrument

    t_stage = time.time()
    dst = _store_path(a)
    if (dst / "zarr.json").exists():
        save(store=str(dst), reused=True, n=_store_rows(a))
        return
    base = Path(a.base) if a.base else a.cache / f"check-base-n{a.n_base}.zarr"
    chunk = 1024 if a.device.startswith("cuda") else 32
    t0 = time.time()
    if not a.base and not (base / "zarr.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "survey_infer", "simulate", "--n", str(a.n_base), "--seed", "2026",
                        "--out", str(base), "--chunk-objects", str(chunk), "--workers", str(a.procs),
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    t1 = time.time()
    gb = zarr.open_group(str(base), mode="r", zarr_format=3)
    a.n_base = min(a.n_base, int(gb.attrs["n_objects"]))
    save(base=str(base), simulated=0 if a.base else a.n_base, simulate_s=round(t1 - t0, 2))
    cols = {k: str(gb[k].dtype) for k in gb.array_keys() if k not in ("flux", "ivar", "mask", "object_id")
            and gb[k].metadata.dimension_names and gb[k].metadata.dimension_names[0] == "object"}
    shutil.rmtree(dst, ignore_errors=True)
    w = create_survey(dst, a.n, store_instrument(base), chunk_objects=chunk, columns=cols, with_mask="mask" in gb)
    # tiled in up to 8 rounds; when the next round would not end inside the stage's box (a slow disk: 65,536
    # MOONS spectra are ~16 GB before compression), stop and commit the rows tiled so far (n_objects = those)
    deadline = t_stage + (a.stage_box or 1e9) - 15.0
    per_round = chunk * a.procs
    step = per_round * max(1, -(-a.n // (8 * per_round)))
    done = 0
    with ProcessPoolExecutor(a.procs) as ex:
        for r0 in range(0, a.n, step):
            r1 = min(a.n, r0 + step)
            t_r = time.time()
            edges = [*range(r0, r1, chunk * max(1, -(-(r1 - r0) // chunk) // a.procs)), r1]
            parts = [(str(base), str(w.work_path), lo, hi, a.n_base) for lo, hi in zip(edges[:-1], edges[1:])
                     if hi > lo]
            done += sum(ex.map(_tile_part, parts))
            save(tiled=done, tile_s=round(time.time() - t1, 2))
            if r1 < a.n and time.time() + 1.3 * (time.time() - t_r) > deadline:
                break
    if done < a.n:
        w.n_rows = done  # commit raises n_objects to the rows written; readers ignore the rest
    w.commit(counts={})
    save(store=str(dst), n=done, n_requested=a.n, stopped_early=done < a.n, chunk_objects=chunk,
         tile_s=round(time.time() - t1, 2),
         gbytes=round(sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 1e9, 3))


def _crc_reader(phase, *a):
    """parallel_timed body: read + decode + CRC32 of rows [lo, hi), as a worker does before inference."""
    import zlib

    import zarr

    if phase == "setup":
        store, lo, hi = a
        g = zarr.open_group(str(store), mode="r", zarr_format=3)
        g["object_id"][lo:lo + 1]
        return (g, lo, hi)
    g, lo, hi = a[0]
    crc = 0
    for s in range(lo, hi, 256):
        e = min(hi, s + 256)
        for k in ("flux", "ivar", "object_id"):
            crc = zlib.crc32(np.ascontiguousarray(g[k][s:e]).view(np.uint8).reshape(-1).data, crc)
    return {"n": hi - lo, "crc": crc}


def _stage_decode(a, save) -> None:
    from . import parallel_timed

    store = _store_path(a)
    edges = np.linspace(0, a.n, a.procs + 1).astype(int)
    r = parallel_timed(_crc_reader, [(str(store), int(edges[i]), int(edges[i + 1])) for i in range(a.procs)])
    save(spectra_per_s=a.n / r["wall_s"], wall_s=r["wall_s"], procs=a.procs, n=a.n)


def _stage_preprocess(a, save) -> None:
    """Preprocessing ceilings: numpy on ``procs`` CPU processes, and torch on the device (the GPU path's)."""
    import torch
    import zarr

    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.hotpath import preprocess_device, window_rows

    gpu = a.device.startswith("cuda")
    n = min(a.n, 16_384 if gpu else a.n)
    save(**preprocess_ceiling(_model_dir(a), _store_path(a), n, a.procs), implementation="numpy (worker CPU)")
    model = load_model(_model_dir(a), device=a.device)
    g = zarr.open_group(str(_store_path(a)), mode="r", zarr_format=3)
    m = min(n, 8192 if gpu else 64)
    flux, ivar = g["flux"][:m], g["ivar"][:m]
    step = window_rows(a.device)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    preprocess_device(flux[:step], ivar[:step], model, None, a.device)  # warm-up
    sync()
    t0 = time.perf_counter()
    for s0 in range(0, m, step):
        preprocess_device(flux[s0:s0 + step], ivar[s0:s0 + step], model, None, a.device)
    sync()
    save(device_spectra_per_s=m / (time.perf_counter() - t0), device_n=m, device_window=step,
         device_note="torch preprocessing on the device incl. host→device copies of flux/ivar from host memory")


def _kernel_busy(fn, device: str) -> dict:
    """GPU kernel time of one ``fn()`` from the profiler (sum of CUDA kernel durations) beside its wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not device.startswith("cuda"):
        return {"kernel_s": None, "wall_s": None}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ks = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA"
             and not e.key.startswith("Memcpy") and not e.key.startswith("Memset")) / 1e6
    return {"kernel_s": ks, "wall_s": wall, "busy_fraction": ks / wall if wall > 0 else None}


def _stage_network(a, save) -> None:
    """Network-only ceilings: the hot path at the device's B, the old 32-row path, bare large batches, IEEE vs
    TF32, GPU-vs-GPU bit identity; CUDA kernel-busy time from the profiler."""
    import torch

    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.device import configure_numerics, micro_batch_size, warm_up
    from survey_infer.model.hotpath import run_network_device
    from survey_infer.model.inference import STREAMS, run_network
    from survey_infer.model.torch_masks import make_masks

    from .mc_cost import load_preprocessed

    dev = a.device
    gpu = dev.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    configure_numerics(dev, "ieee")
    model = load_model(_model_dir(a), device=dev)
    B = micro_batch_size(dev)
    save(micro_batch=B, warm_up_s=warm_up(model, dev, B, 2))
    n = min(a.n, 4096 if gpu else 32)
    x, sc, oid = load_preprocessed(_store_path(a), n, model)
    rows = np.arange(n)

    def hot():
        return run_network_device(model, x, sc, oid, rows, a.T, 0, dev)

    r1 = hot()
    sync()
    t0 = time.perf_counter()
    r2 = hot()
    sync()
    dt = time.perf_counter() - t0
    same = all(np.array_equal(r1[k], r2[k], equal_nan=True) for k in r1)
    save(hotpath_spectra_per_s=n / dt, n=n, repeat_bit_identical=bool(same), hotpath_busy=_kernel_busy(hot, dev))
    m = min(n, 2048 if gpu else 64)
    t0 = time.perf_counter()
    run_network(model, x[:m], sc[:m], oid[:m], rows[:m], a.T, 0, dev)
    sync()
    save(old_path_b32_spectra_per_s=m / (time.perf_counter() - t0))
    cfg = model.net.cfg
    bare = {}
    logits = {}
    for prec in (("ieee", "tf32") if gpu else ("ieee",)):
        configure_numerics(dev, prec)
        for bsz in ((B, 4 * B) if gpu else (B,)):
            bsz = min(bsz, n)
            xb = torch.from_numpy(x[:bsz]).to(dev)
            sb = torch.from_numpy(sc[:bsz]).to(dev)
            ob = torch.from_numpy(oid[:bsz]).to(dev)
            valid = torch.ones(bsz, dtype=torch.bool, device=dev)

            def step():
                with torch.inference_mode():
                    mk = make_masks(cfg.mask_units(), STREAMS, cfg.p_drop, ob, valid, a.T, 0)
                    tr = model.net.trunk(xb, sb)
                    return model.net.head(tr["a"], tr["ctx"], mk, tr.get("zadd"))

            hd = step()
            sync()
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or (time.perf_counter() - t0 < (3.0 if gpu else 0.2) and reps < 200):
                step()
                reps += 1
            sync()
            bare[f"{prec}_B{bsz}"] = {"spectra_per_s": reps * bsz / (time.perf_counter() - t0),
                                      **_kernel_busy(step, dev)}
            if bsz == B:
                logits[prec] = hd["logits_z"].double().cpu()
        save(bare=bare)
    configure_numerics(dev, "ieee")
    if "tf32" in logits:
        d = (logits["tf32"] - logits["ieee"]).abs()
        save(tf32_vs_ieee_max_abs_dlogit=float(d.max()), tf32_vs_ieee_median_abs_dlogit=float(d.median()))


def _stage_screening(a, save) -> None:
    """Screening on the device (:mod:`survey_infer.model.torch_screening`) beside the numpy screening (one host
    core) on the same PDFs — the network's, from the store's spectra — with their agreement; then whole windows
    on the device (:func:`survey_infer.model.hotpath.infer_window_device`: bad-input fractions, preprocessing,
    network, screening, one copy back) on one thread."""
    import torch
    import zarr

    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.device import configure_numerics
    from survey_infer.model.hotpath import (
        infer_window_device,
        run_network_device,
        window_rows,
    )
    from survey_infer.model.inference import finish_rows as finish_numpy
    from survey_infer.model.torch_preprocess import preprocess_torch
    from survey_infer.model.torch_screening import finish_rows as finish_torch

    dev = a.device
    gpu = dev.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    configure_numerics(dev, "ieee")
    model = load_model(_model_dir(a), device=dev)
    th = model.calibration.get("thresholds", {})
    zg = model.zgrid
    win = window_rows(dev)
    n = min(a.n, 4 * win if gpu else 64)
    g = zarr.open_group(str(_store_path(a)), mode="r", zarr_format=3)
    flux, ivar, oid = g["flux"][:n], g["ivar"][:n], g["object_id"][:n]
    rows = np.arange(n)
    with torch.inference_mode():
        pp = preprocess_torch(torch.from_numpy(flux).to(dev), torch.from_numpy(ivar).to(dev), model.instrument,
                              model.sky_mask, None, device=dev)
        net = run_network_device(model, pp["x"], pp["scalars"], oid, rows, a.T, 0, dev, keep_on_device=True)
        pz = net.pop("pz")
        bad = torch.zeros(n, dtype=torch.float64, device=dev)
        ng = pp["n_good"].to(torch.int64)
        zc = torch.from_numpy(np.asarray(zg.centres, np.float64)).to(dev)

        def screen():
            with torch.inference_mode():
                return finish_torch(pz, net, pp["snr"], pp["masked_fraction"], ng, bad, zc, zg.dz,
                                    (zg.z_min, zg.z_max), th, True)

        got = screen()
        sync()
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or (time.perf_counter() - t0 < (2.0 if gpu else 0.2) and reps < 100):
            screen()
            reps += 1
        sync()
        dt = (time.perf_counter() - t0) / reps
    save(n=n, T=a.T, device_spectra_per_s=n / dt, device_s_per_call=dt, busy=_kernel_busy(screen, dev))
    host = {k: v.cpu().numpy() for k, v in got.items()}
    net_h = {k: v.cpu().numpy() for k, v in net.items()}
    pz_h = pz.cpu().numpy()
    t0 = time.perf_counter()
    ref = finish_numpy(model, pz_h.copy(), net_h, pp["snr"].cpu().numpy(), pp["masked_fraction"].cpu().numpy(),
                       ng.cpu().numpy(), bad.cpu().numpy(), th, True)
    numpy_s = time.perf_counter() - t0
    diffs = {k: float(np.nanmax(np.abs(host[k].astype(np.float64) - ref[k]))) if ref[k].dtype.kind == "f"
             and np.isfinite(ref[k]).any() else None for k in ref if k != "pz"}
    save(numpy_one_core_spectra_per_s=n / numpy_s,
         agreement={"bit_identical": all(np.array_equal(host[k], ref[k], equal_nan=True) for k in ref),
                    "zwarn_equal_fraction": float(np.mean(host["zwarn"] == ref["zwarn"])),
                    "npeaks_equal_fraction": float(np.mean(host["pz_npeaks"] == ref["pz_npeaks"])),
                    "nan_rows_equal": bool(np.array_equal(np.isnan(host["z"]), np.isnan(ref["z"]))),
                    "max_abs_diff": diffs},
         note="agreement: the same PDFs screened on the device vs numpy on the host (bit-identical on a CPU)")
    # whole windows on the device, one thread: what one worker thread can feed per second
    if gpu:  # warm-up (kernel selection at the window's shapes); the CPU dry run skips it
        infer_window_device(model, flux[:win], ivar[:win], None, oid[:win], rows[:win], a.T, 0, dev, thresholds=th)
        sync()
    t0 = time.perf_counter()
    for s0 in range(0, n, win):
        infer_window_device(model, flux[s0:s0 + win], ivar[s0:s0 + win], None, oid[s0:s0 + win],
                            rows[s0:s0 + win], a.T, 0, dev, thresholds=th)
    save(window_spectra_per_s=n / (time.perf_counter() - t0), window_rows=win,
         window_note="infer_window_device from host flux/ivar: preprocessing, network, screening, one copy back")


def _one_run(store, cat, model: str, T: int, extra: tuple, limit_s: float) -> dict:
    """One ``survey-infer run`` into a fresh catalog, stopped after ``limit_s``: a run cut short still gives the
    rate of the blocks it finished (from their done-markers)."""
    import shutil
    import sys

    from . import read_markers

    shutil.rmtree(cat, ignore_errors=True)
    cmd = [sys.executable, "-m", "survey_infer", "run", "--input", str(store), "--output", str(cat), "--model",
           str(model), "--workers", "1", "--mc-samples", str(T), "--no-progress", "--json", *extra]
    t0 = time.time()
    code, out, err, timed_out = _run_in_group(cmd, max(1.0, limit_s))  # a killed run takes its workers along
    complete = code == 0 and not timed_out
    wall = time.time() - t0
    marks = read_markers(cat) if cat.exists() else []
    done = int(sum(int(m["hi"]) - int(m["lo"]) for m in marks))
    rec = {"wall_s": wall, "complete": complete, "returncode": code, "spectra_done": done, "cmd": " ".join(cmd)}
    if marks:
        t_last = max(float(m["time"]) for m in marks)
        rec["rate_to_last_block"] = done / max(1e-9, t_last - t0)
    if complete:
        try:
            summary = json.loads(out[out.index("{"):])
            rec.update(runner_s=summary.get("seconds"), timings=summary.get("timings"))
        except ValueError:
            pass
    else:
        rec["stderr_tail"] = (err or "")[-1500:]
    return rec


def _stage_end_to_end(a, save) -> None:
    """``survey-infer run`` (T = a.T) repeated into fresh catalogs for ``sustain_s``; sustained spectra/s
    (spectra / wall time, start-up included as a user pays it). Each run is stopped before the stage's box ends
    (``--stage-box``); a stopped run counts the blocks it finished. A first run that fails with CUDA out of
    memory (B = 1,024 on each of the worker's threads) is retried once with ``SURVEY_INFER_MICRO_BATCH=256``."""
    import os
    import shutil

    gpu = a.device.startswith("cuda")
    extra = ("--cluster", a.cluster) + (() if gpu else ("--device", "cpu"))
    cat = a.cache / "check-cat.zarr"
    runs = []
    t0 = time.time()
    end = t0 + (a.stage_box or 1e9) - 8.0  # leave time to write the result
    while not runs or (time.time() - t0 < a.sustain_s and time.time() < end - 5):
        r = _one_run(_store_path(a), cat, _model_dir(a), a.T, extra, end - time.time())
        runs.append(r)
        done = sum(x["spectra_done"] for x in runs)
        save(runs=runs, sustained_spectra_per_s=done / sum(x["wall_s"] for x in runs),
             sustained_over_s=time.time() - t0, n_per_run=a.n, complete_runs=sum(x["complete"] for x in runs))
        oom = "out of memory" in (r.get("stderr_tail") or "").lower()
        if gpu and oom and not r["spectra_done"] and "SURVEY_INFER_MICRO_BATCH" not in os.environ \
                and time.time() < end - 30:
            # B = 1,024 on every worker thread did not fit: one more try at B = 256 (recorded, fingerprinted)
            os.environ["SURVEY_INFER_MICRO_BATCH"] = "256"
            save(oom_fallback_micro_batch=256)
            continue
        if not r["complete"]:
            break
    shutil.rmtree(cat, ignore_errors=True)
    if not any(x["complete"] for x in runs) and not runs[-1]["spectra_done"]:
        raise RuntimeError("survey-infer run finished no block: " + runs[-1].get("stderr_tail", "")[-500:])


# ================================================================================================ CPU comparison
def _peaked_pdfs(zc: np.ndarray, n: int, rng) -> np.ndarray:
    """Network-like PDFs for the screening timings: a Gaussian peak 1–6 bins wide, a secondary peak in a third of
    the rows, a small floor; a few broad rows (the intervals' bin-resolution fallback)."""
    dz = zc[1] - zc[0]
    z0 = rng.uniform(zc[0], zc[-1], (n, 1))
    s = rng.uniform(1, 6, (n, 1)) * dz
    pz = np.exp(-0.5 * ((zc[None, :] - z0) / s) ** 2)
    sec = rng.random((n, 1)) < 0.33
    z1 = rng.uniform(zc[0], zc[-1], (n, 1))
    pz += sec * rng.uniform(0.05, 0.6, (n, 1)) * np.exp(-0.5 * ((zc[None, :] - z1) / (2 * dz)) ** 2)
    pz += rng.uniform(1e-6, 1e-3, (n, 1))
    pz[: max(1, n // 20)] += 0.02  # broad
    return pz / pz.sum(1, keepdims=True)


def cpu_compare(model_dir: str | None = None, n: int = 64, T: int = 50, repeats: int = 5, out=None) -> dict:
    """Issue 15 point 7: the torch hot path beside today's numpy path, one thread, same inputs, same run.

    Stages timed (per spectrum, median of ``repeats`` interleaved runs, one core: ``torch.set_num_threads(1)``):
    preprocessing (:func:`survey_infer.preprocess.preprocess` vs :func:`.torch_preprocess.preprocess_torch`),
    dropout masks (:func:`survey_infer.model.mc.keep_masks` vs :func:`survey_infer.model.torch_masks.keep_masks`,
    all four families), the network window with MC statistics (``inference.run_network`` vs
    ``hotpath.run_network_device``, B = 32: bit-identical outputs, checked), the screening (statistics, HPD
    intervals, flags, NODATA rows: ``inference.finish_rows`` vs ``torch_screening.finish_rows`` on 1,024
    network-like PDFs: bit-identical, checked) and the whole window (``inference.infer_block`` on the numpy path
    vs ``hotpath.infer_window_device``: preprocessing, network, screening, one packed copy). Other processes'
    CPU use (``foreign_cpu``) and the load average (``uptime``) are sampled during the run: the machine is shared.
    """
    import os

    import torch

    from survey_infer.model import mc
    from survey_infer.model import torch_masks as tm
    from survey_infer.model import torch_screening as ts
    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.hotpath import infer_window_device, run_network_device
    from survey_infer.model.inference import (
        STREAMS,
        finish_rows,
        infer_block,
        run_network,
    )
    from survey_infer.model.torch_preprocess import preprocess_torch
    from survey_infer.preprocess import preprocess

    from . import foreign_cpu, hardware

    torch.set_num_threads(1)
    model = load_model(model_dir or "default")
    cfg = model.cfg
    rng = np.random.default_rng(0)
    W = model.instrument.n_wave
    x = rng.normal(0, 1, (n, cfg.n_in, W)).astype(np.float32)
    sc = rng.normal(0, 1, (n, cfg.n_scalars)).astype(np.float32)
    oid = np.arange(n, dtype=np.int64) + 12345
    rows = np.arange(n)
    toid = torch.from_numpy(oid)
    zg = model.zgrid
    th = model.calibration.get("thresholds", {})
    m_pdf = 1024
    pz = _peaked_pdfs(zg.centres, m_pdf, rng)
    net = {k: rng.uniform(0, 0.05, m_pdf) for k in ("p_outside", "z_mc_std", "logmstar", "logmstar_err",
                                                    "logmstar_err_mc", "logsfr", "logsfr_err", "logsfr_err_mc")}
    snr = rng.uniform(0, 20, m_pdf).astype(np.float32)
    mfr = rng.uniform(0, 0.5, m_pdf).astype(np.float32)
    ng = rng.integers(0, 3, m_pdf) * 5000
    bad = rng.uniform(0, 0.1, m_pdf)
    t_in = {"pz": torch.from_numpy(pz), "net": {k: torch.from_numpy(v) for k, v in net.items()},
            "snr": torch.from_numpy(snr), "mfr": torch.from_numpy(mfr), "ng": torch.from_numpy(ng),
            "bad": torch.from_numpy(bad), "zc": torch.from_numpy(zg.centres)}

    def screen_np():
        return finish_rows(model, pz.copy(), dict(net), snr, mfr, ng, bad, th)

    def screen_t():
        return ts.finish_rows(t_in["pz"], t_in["net"], t_in["snr"], t_in["mfr"], t_in["ng"], t_in["bad"],
                              t_in["zc"], zg.dz, (zg.z_min, zg.z_max), th)

    def masks_np():
        for k, u in cfg.mask_units().items():
            mc.keep_masks(0, oid, T, u, cfg.p_drop, STREAMS[k])

    def masks_t():
        for k, u in cfg.mask_units().items():
            tm.keep_masks(0, toid, T, u, cfg.p_drop, STREAMS[k])

    cont = 2.0 + np.sin(model.instrument.wave / 700.0)
    flux = (rng.uniform(0.1, 20, n)[:, None] * cont[None, :] + rng.normal(0, 1, (n, W))).astype(np.float32)
    ivar = rng.uniform(0.5, 2.0, (n, W)).astype(np.float32)
    ref = run_network(model, x, sc, oid, rows, T, 0, "cpu")
    got = run_network_device(model, x, sc, oid, rows, T, 0, "cpu")
    identical = all(np.array_equal(ref[k], got[k], equal_nan=True) for k in ref)
    s_ref, s_got = screen_np(), screen_t()
    screen_identical = all(np.array_equal(s_ref[k], s_got[k].numpy(), equal_nan=True) for k in s_ref)
    pairs = {"preprocessing": (lambda: preprocess(flux, ivar, model.instrument, model.sky_mask),
                               lambda: preprocess_torch(flux, ivar, model.instrument, model.sky_mask), n),
             "masks": (masks_np, masks_t, n),
             "network window + MC statistics": (lambda: run_network(model, x, sc, oid, rows, T, 0, "cpu"),
                                                lambda: run_network_device(model, x, sc, oid, rows, T, 0, "cpu"), n),
             "screening (statistics, HPD intervals, flags)": (screen_np, screen_t, m_pdf),
             "whole window (preprocess + network + screening + copy)": (
                 lambda: infer_block(model, flux, ivar, oid, 0, mc_samples=T, seed=0),
                 lambda: infer_window_device(model, flux, ivar, None, oid, rows, T, 0, "cpu", thresholds=th), n)}
    times: dict = {k: {"numpy": [], "torch": []} for k in pairs}
    load, loadavg = [], [os.getloadavg()]
    for _ in range(repeats):
        for k, (fa, fb, m) in pairs.items():
            for name, f in (("numpy", fa), ("torch", fb)):
                t0 = time.perf_counter()
                f()
                times[k][name].append((time.perf_counter() - t0) / m * 1e3)
        load.append(foreign_cpu(0.3))
        loadavg.append(os.getloadavg())
    res = {"n": n, "T": T, "repeats": repeats, "threads": 1, "model": str(model.path), "screening_pdfs": m_pdf,
           "window_outputs_bit_identical": bool(identical), "screening_outputs_bit_identical": bool(screen_identical),
           "foreign_cpu_cores_median": median(load), "foreign_cpu_cores_samples": load,
           "loadavg_1_5_15_samples": [list(v) for v in loadavg],
           "note": "one shared 2-core machine with other engineers' jobs running: compare within a row only",
           "core_ms_per_spectrum": {k: {p: median(v[p]) for p in v} for k, v in times.items()},
           "core_ms_per_spectrum_all_runs": times, "hardware": hardware()}
    for k, v in res["core_ms_per_spectrum"].items():
        v["torch_over_numpy"] = v["torch"] / v["numpy"] if v["numpy"] else None
    if out:
        _write_json(out, res)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
