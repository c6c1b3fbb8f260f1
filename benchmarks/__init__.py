"""survey-infer benchmarks (DESIGN §9): how fast, against what, and how close to the limit.

Run everything this machine can run with ``python -m benchmarks`` (see :mod:`benchmarks.__main__`); every
module also runs on its own (``python -m benchmarks.mc_cost --help``). Benchmarks are never timed tests: they
print a table with the target beside each measured value and write JSON + PNG to ``benchmarks/results/``.

This module holds what the benchmarks share:

* :class:`BenchConfig` — sizes, paths, the model and the cache folder (simulated stores are made once and
  reused; they live outside the repository, in ``$SURVEY_INFER_BENCH_CACHE`` or ``~/.cache/survey-infer-bench``);
* :func:`benchmark_model` — the shipped model, or a full-size *untrained* model with the same architecture
  (same compute cost) when the package has none yet;
* :func:`simulated_store` — a cached simulated MOONS survey;
* :func:`foreign_cpu` / :class:`Quiet` — how many cores other people's processes use (timings taken while the
  machine is shared are flagged, not silently trusted);
* :func:`hardware` — the record that goes with every result (CPU, cores, memory, versions, commit, date);
* :func:`row` / :func:`format_table` — the result table (``PASS`` / ``MISS`` against each target).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

#: worker-process environment used by ``survey-infer run`` (see survey_infer.pipeline.clusters.WORKER_ENV); the in-memory
#: reference processes get the same, so the comparison isolates the pipeline
def worker_env() -> dict[str, str]:
    from survey_infer.pipeline.clusters import WORKER_ENV

    return dict(WORKER_ENV)


# ------------------------------------------------------------------------------------------------ config


@dataclass
class BenchConfig:
    """Settings shared by the benchmarks.

    Attributes
    ----------
    cache : Path
        Folder for simulated stores, models and scratch catalogs (outside the repository).
    out : Path
        Where JSON and PNG results go (``benchmarks/results`` by default).
    quick : bool
        Smoke-test sizes (seconds, not minutes): checks the code paths, the numbers mean nothing.
    workers : int
        Worker processes for pipeline runs (2 here).
    mc_samples : int
        T for MC dropout (50).
    n_store : int
        Spectra in the main benchmark store (12,000: the speed target is defined on it).
    seed : int
        Simulation seed of the main store.
    model : str or None
        Model directory; ``None`` = the shipped one, or a full-size untrained model if none is shipped.
    repeats : int
        Repeats of each timed measurement (medians are reported).
    """

    cache: Path = field(default_factory=lambda: Path(os.environ.get(
        "SURVEY_INFER_BENCH_CACHE", Path.home() / ".cache" / "survey-infer-bench")))
    out: Path = RESULTS
    quick: bool = False
    workers: int = 2
    mc_samples: int = 50
    n_store: int = 12000
    seed: int = 2026
    model: str | None = None
    repeats: int = 3
    max_foreign_cores: float = 0.5
    quiet_wait_s: float = 60.0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.cache = Path(self.cache)
        self.out = Path(self.out)
        if self.quick:
            self.n_store = min(self.n_store, 600)
            self.repeats = 1
            self.quiet_wait_s = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def add_common_arguments(p) -> None:
    """Arguments every benchmark module accepts."""
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (checks the code, numbers meaningless)")
    p.add_argument("--model", default=None, help="model directory (default: shipped, else full-size untrained)")
    p.add_argument("--cache", default=None, help="folder for simulated stores and scratch (default "
                                                 "$SURVEY_INFER_BENCH_CACHE or ~/.cache/survey-infer-bench)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (JSON, PNG)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per timed measurement (medians reported)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")


def config_from_args(args) -> BenchConfig:
    """A :class:`BenchConfig` from parsed arguments; ``--quick`` results go to the cache, not ``results/``."""
    kw = {"quick": args.quick, "model": args.model, "out": Path(args.out), "repeats": args.repeats,
          "workers": args.workers}
    if args.cache:
        kw["cache"] = Path(args.cache)
    cfg = BenchConfig(**kw)
    if args.quick and Path(args.out).resolve() == RESULTS:
        cfg.out = cfg.cache / "smoke-results"
    return cfg


# ------------------------------------------------------------------------------------------------ inputs


def benchmark_model(cfg: BenchConfig) -> tuple[str, str]:
    """``(model_dir, kind)``: ``cfg.model``, the shipped model, or a full-size untrained one.

    The untrained model has the default :class:`~survey_infer.model.network.NetConfig` architecture (what
    ``survey-infer train`` builds), seeded weights and neutral calibration: its compute cost is the shipped
    model's, its accuracy is meaningless (accuracy rows then say so).
    """
    from survey_infer.model.checkpoint import META, default_model_dir

    if cfg.model:
        return str(Path(cfg.model).resolve()), "given"
    d = default_model_dir()
    if (d / META).exists():
        return str(d), "shipped"
    out = cfg.cache / "model-untrained-full"
    if not (out / META).exists():
        make_untrained_model(out)
    return str(out), "untrained full-size (no shipped model yet)"


def make_untrained_model(out: Path, arch: dict | None = None, seed: int = 0) -> Path:
    """Save a seeded untrained model with architecture ``arch`` (None = the default full size)."""
    import torch

    from survey_infer.instrument import load_instrument
    from survey_infer.model.checkpoint import save_model
    from survey_infer.model.network import NetConfig, SpectrumNet
    from survey_infer.model.zgrid import ZGrid
    from survey_infer.preprocess import PREPROCESSING_VERSION, n_scalars
    from survey_infer.skymask import instrument_sky_mask

    inst = load_instrument()
    torch.manual_seed(seed)
    ncfg = NetConfig(**{"n_scalars": n_scalars(inst), **(arch or {})})
    net = SpectrumNet(ncfg, inst, ZGrid()).eval()
    save_model(out, net, inst, instrument_sky_mask(inst), PREPROCESSING_VERSION,
               {"temperature": 1.0, "target_norm": {"logmstar": [10.0, 0.6], "logsfr": [1.0, 0.6]},
                "thresholds": {"quality": 0.3}}, {"note": "untrained benchmark model (compute cost only)"})
    return out


#: a model whose network costs next to nothing (the "trivial model" of the I/O-limit benchmark)
TRIVIAL_ARCH = {"width": 4, "dilations": (1,), "n_gather": 1, "head_h1": 4, "head_h2": 2, "pool_width": 4,
                "feat_dim": 4, "mlp_hidden": 4}


def trivial_model(cfg: BenchConfig) -> str:
    from survey_infer.model.checkpoint import META

    out = cfg.cache / "model-trivial"
    if not (out / META).exists():
        make_untrained_model(out, TRIVIAL_ARCH)
    return str(out)


def simulated_store(cfg: BenchConfig, n: int, seed: int | None = None, chunk_objects: int = 256,
                    workers: int | None = None) -> Path:
    """A simulated survey of ``n`` spectra in the cache (``survey-infer simulate``, made once, reused)."""
    from survey_infer.simulate import SIM_VERSION

    seed = cfg.seed if seed is None else seed
    path = cfg.cache / f"survey-n{n}-s{seed}-c{chunk_objects}-v{SIM_VERSION}.zarr"
    if (path / "zarr.json").exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"simulating {n:,} spectra (seed {seed}) -> {path} (made once, then reused)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "survey_infer", "simulate", "--n", str(n), "--seed", str(seed),
                    "--out", str(path), "--chunk-objects", str(chunk_objects), "--workers", str(workers or cfg.workers),
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    log(f"  simulated in {time.perf_counter() - t0:.0f} s")
    return path


def cli_run(store, catalog, model: str, workers: int, T: int, extra: tuple = ()) -> dict:
    """``survey-infer run`` as a user runs it (a fresh process, LocalCluster); wall time incl. start-up."""
    if catalog.exists():
        shutil.rmtree(catalog)
    cmd = [sys.executable, "-m", "survey_infer", "run", "--input", str(store), "--output", str(catalog), "--model",
           str(model), "--workers", str(workers), "--mc-samples", str(T), "--no-progress", "--json", *extra]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"survey-infer run failed ({p.returncode}): {p.stderr[-2000:]}")
    out = p.stdout
    summary = json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)
    return {"wall_s": t1 - t0, "t_launch": t0, "t_exit": t1, "summary": summary, "cmd": " ".join(cmd)}


def read_markers(catalog: Path, job: str = "main") -> list[dict]:
    """The done-markers a run wrote (per block: ``lo``, ``hi``, ``time`` of completion, stage ``timings``)."""
    d = Path(catalog) / "_markers" / job
    return [json.loads(p.read_text()) for p in sorted(d.glob("block-*.json"))]


# ------------------------------------------------------------------------------------------------ machine


def hardware() -> dict:
    """CPU, cores, memory, GPU, library versions, git commit and UTC date of this run."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import numpy
    import torch
    import zarr

    try:
        import dask
        import distributed

        dv = {"dask": dask.__version__, "distributed": distributed.__version__}
    except ImportError:  # pragma: no cover
        dv = {}
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = ""
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "zarr": zarr.__version__, **dv,
            "commit": commit, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _my_pids() -> set[int]:
    import psutil

    me = psutil.Process()
    pids = {me.pid}
    try:
        pids |= {c.pid for c in me.children(recursive=True)}
    except psutil.Error:
        pass
    return pids


def foreign_cpu(interval: float = 1.0) -> float:
    """Cores used by processes that are not this one or its children, averaged over ``interval`` seconds.

    Load average cannot tell our own worker processes from other people's jobs; this can.
    """
    import psutil

    def snap():
        mine = _my_pids()
        out = {}
        for p in psutil.process_iter(["pid", "cpu_times"]):
            if p.info["pid"] in mine or p.info["cpu_times"] is None:
                continue
            t = p.info["cpu_times"]
            out[p.info["pid"]] = t.user + t.system
        return out

    a = snap()
    t0 = time.perf_counter()
    time.sleep(interval)
    b = snap()
    dt = time.perf_counter() - t0
    return sum(max(0.0, b[k] - a.get(k, b[k])) for k in b) / dt


class Quiet:
    """Record (and briefly wait for) a quiet machine around a measurement.

    ``with Quiet(cfg, "name") as q: ...`` waits up to ``wait_s`` for other processes to use less than
    ``cfg.max_foreign_cores`` cores, and records the foreign load before and after in ``q.record``; a
    measurement taken on a busy machine is flagged (``q.busy``), never hidden.
    """

    def __init__(self, cfg: BenchConfig, name: str, wait_s: float | None = None):
        self.cfg, self.name = cfg, name
        self.wait_s = cfg.quiet_wait_s if wait_s is None else wait_s
        self.record: dict = {}

    def __enter__(self):
        t0 = time.perf_counter()
        f = foreign_cpu(0.5)
        while f > self.cfg.max_foreign_cores and time.perf_counter() - t0 < self.wait_s:
            f = foreign_cpu(2.0)
        if f > self.cfg.max_foreign_cores:
            log(f"  [{self.name}] other processes use {f:.1f} cores: timing anyway, flagged")
        self.record = {"foreign_cores_before": round(f, 2), "loadavg_before": round(os.getloadavg()[0], 2)}
        return self

    def __exit__(self, *exc):
        f = foreign_cpu(0.5)
        self.record.update({"foreign_cores_after": round(f, 2), "loadavg_after": round(os.getloadavg()[0], 2)})
        return False

    @property
    def busy(self) -> bool:
        return max(self.record.get("foreign_cores_before", 0), self.record.get("foreign_cores_after", 0)) > \
            self.cfg.max_foreign_cores


def _child_main(fn, args, barrier, queue, index):
    import time as _t

    try:
        state = fn("setup", *args)
        barrier.wait()
        t0 = _t.time()
        out = fn("work", state)
        t1 = _t.time()
        queue.put({"ok": True, "index": index, "t_start": t0, "t_end": t1, **(out or {})})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        queue.put({"ok": False, "index": index, "error": f"{type(exc).__name__}: {exc}"})


def parallel_timed(fn, args_list: list[tuple], env: dict | None = None, timeout: float = 3600.0) -> dict:
    """Run ``fn`` in one fresh (spawned) process per ``args`` and time the work phases side by side.

    ``fn("setup", *args)`` runs first in every process (loading data, models: not timed) and returns a state;
    all processes then start together (a barrier) and time ``fn("work", state)``, which may return a dict of
    numbers. ``env`` is set in the processes' environment before they start (e.g. the pipeline workers'
    ``MALLOC_*``/``OMP_*`` variables, read at process start). ``fn`` must be importable (a module-level function).

    Returns
    -------
    dict
        ``wall_s`` (first start to last end), ``per_process`` (in the order of ``args_list``: each process's
        ``seconds`` and returned values).
    """
    import multiprocessing as mp
    import queue as _queue

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    q = ctx.Queue()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        procs = [ctx.Process(target=_child_main, args=(fn, a, barrier, q, i)) for i, a in enumerate(args_list)]
        for p in procs:
            p.start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    res: list = []
    t0 = time.time()
    while len(res) < len(procs):
        try:
            res.append(q.get(timeout=2.0))
        except _queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.time() - t0 > timeout:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                raise RuntimeError(f"benchmark process died (exit code {dead[0].exitcode})" if dead else
                                   f"benchmark processes did not finish within {timeout:.0f} s")
    for p in procs:
        p.join(timeout=60)
    bad = [r["error"] for r in res if not r.get("ok")]
    if bad:
        raise RuntimeError(f"benchmark process failed: {bad[0]}")
    res.sort(key=lambda r: r["index"])
    for r in res:
        r["seconds"] = r["t_end"] - r["t_start"]
    return {"wall_s": max(r["t_end"] for r in res) - min(r["t_start"] for r in res), "per_process": res}


def drop_caches() -> bool:
    """Drop the page cache (needs root) for cold-read timings; False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def median(xs) -> float:
    return float(statistics.median(xs))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ results


def row(section: str, metric: str, value, unit: str = "", target: str = "", ok: bool | None = None,
        note: str = "") -> dict:
    """One line of the result table; ``ok`` None = reported, no target (or not measurable here)."""
    return {"section": section, "metric": metric, "value": value, "unit": unit, "target": target, "ok": ok,
            "note": note}


def fmt_value(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    a = abs(v)
    if a == 0:
        s = "0"
    elif a >= 1e5:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:,.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 0.1:
        s = f"{v:.3g}"
    else:
        s = f"{v:.2g}"
    return f"{s} {unit}".strip()


def status(ok) -> str:
    return {True: "PASS", False: "MISS", None: ""}[ok]


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The result table: section, metric, measured, target, PASS/MISS, note."""
    head = ["", "metric", "measured", "target", "", "note"]
    body = [[r["section"], r["metric"], fmt_value(r["value"], r["unit"]), r["target"], status(r["ok"]), r["note"]]
            for r in rows]
    if markdown:
        lines = ["| " + " | ".join(h or " " for h in ["section", "metric", "measured", "target", "status", "note"])
                 + " |", "|" + "---|" * 6]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
        return "\n".join(lines)
    w = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    w[5] = min(w[5], 70)
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)), "  ".join("-" * x for x in w)]
    for b in body:
        out.append("  ".join(c.ljust(w[i]) if i < 5 else c for i, c in enumerate(b)))
    return "\n".join(out)


def save_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)
    return path


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def standalone(module_run, description: str, argv=None, extra_args=None) -> int:
    """``main()`` of a benchmark module: parse the common arguments, run, print the table, save JSON.

    ``extra_args(parser)`` adds module options; their values reach the module as ``cfg.options``.
    """
    import argparse

    p = argparse.ArgumentParser(description=description)
    add_common_arguments(p)
    if extra_args:
        extra_args(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    common = {"quick", "model", "cache", "out", "repeats", "workers"}
    cfg.options = {k: v for k, v in vars(args).items() if k not in common}
    res = module_run(cfg, {})
    print(format_table(res["rows"]))
    name = Path(sys.modules[module_run.__module__].__file__).stem
    if res.get("details", {}).get("smoke"):
        name += "-smoke"
    save_json(cfg.out / f"{name}.json", {"hardware": hardware(), "config": cfg.to_dict(), **res})
    print(f"wrote {cfg.out / (name + '.json')}")
    return 0
