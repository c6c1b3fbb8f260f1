#!/usr/bin/env python
"""Strong and weak scaling of ``survey-infer run``, and the scheduler overhead per task, on any cluster kind.

For every worker count W it starts a cluster of W single-threaded workers (``local`` processes, ``slurm`` jobs via
dask-jobqueue, ``cuda``), waits until all W have joined, and then measures

* **overhead**: tiny no-op tasks through the same cluster —
  ``burst``: N tasks submitted at once (amortised scheduler cost per task, throughput-bound);
  ``bounded``: N tasks with 2 x W in flight, as the pipeline submits its blocks (per-task cost in that pattern);
  ``round trip``: submit one task and wait for its result, repeated (latency of one task);
* **strong scaling**: the same survey (``--n`` objects) on W workers: time T(W), speed-up T(1)/T(W), efficiency
  speed-up / W;
* **weak scaling**: ``--n-per-worker`` x W objects on W workers: efficiency T(1)/T(W).

It prints a table, and writes ``scaling.json`` and ``scaling.png`` (speed-up and efficiency against W) to
``--out``. With ``--cluster ADDRESS`` (an existing scheduler) the worker count cannot be changed: it measures the
one point it finds.

Examples::

    python benchmarks/scaling.py --mode overhead --workers 1,2                       # here: 2 cores
    python benchmarks/scaling.py --workers 1,2,4,8,16 --n 8000 --n-per-worker 1000   # a 16-core node
    python benchmarks/scaling.py --cluster slurm --workers 1,2,4 --slurm-cores 1 --slurm-memory 4GiB
    python benchmarks/scaling.py --cluster cuda --workers 1 --mode strong --n 20000  # the GPU worker

The timed runs use ``survey_infer.pipeline.runner.run_catalog`` with the client of the cluster, so the cluster's
start and the workers' joining are excluded (reported separately as ``join_s``), and an untimed warm-up run on a
64-object survey imports torch and loads the model on every worker first (``--no-warmup`` to include that).
Surveys are simulated once into ``--out`` and reused.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# ------------------------------------------------------------------------------------------------ overhead


def _noop(i):
    return i


def measure_overhead(client, n_tasks: int = 2000, n_round_trips: int = 30, in_flight: int | None = None) -> dict:
    """Scheduler overhead per task on ``client``'s cluster, from tiny no-op tasks.

    Parameters
    ----------
    client : distributed.Client
    n_tasks : int
        No-op tasks per measurement.
    n_round_trips : int
        Sequential submit-and-wait round trips.
    in_flight : int, optional
        Futures kept in flight for the ``bounded`` pattern (default 2 x worker threads, like the pipeline).

    Returns
    -------
    dict
        ``burst_ms_per_task``, ``bounded_ms_per_task``, ``round_trip_ms_median``, ``round_trip_ms_p90`` (ms),
        ``n_tasks``, ``in_flight``, ``threads``.
    """
    from distributed import as_completed

    threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
    in_flight = in_flight or max(2, 2 * threads)
    client.gather(client.map(_noop, range(200), pure=False))  # warm up (function pickled, comms open)

    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(n_tasks), pure=False))
    burst = (time.perf_counter() - t0) / n_tasks

    t0 = time.perf_counter()
    it = iter(range(n_tasks))
    ac = as_completed([client.submit(_noop, next(it), pure=False) for _ in range(min(in_flight, n_tasks))])
    for fut in ac:
        fut.result()
        nxt = next(it, None)
        if nxt is not None:
            ac.add(client.submit(_noop, nxt, pure=False))
    bounded = (time.perf_counter() - t0) / n_tasks

    rts = []
    for i in range(n_round_trips):
        t0 = time.perf_counter()
        client.submit(_noop, i, pure=False).result()
        rts.append(time.perf_counter() - t0)
    rts.sort()
    return {
        "n_tasks": n_tasks, "threads": threads, "in_flight": in_flight,
        "burst_ms_per_task": 1e3 * burst, "bounded_ms_per_task": 1e3 * bounded,
        "round_trip_ms_median": 1e3 * statistics.median(rts),
        "round_trip_ms_p90": 1e3 * rts[min(len(rts) - 1, int(0.9 * len(rts)))],
    }


# ------------------------------------------------------------------------------------------------ clusters


def start_cluster(kind: str, workers: int, slurm_options: dict):
    """``(client, cluster, join_s)`` with ``workers`` single-threaded workers joined (None cluster: an address)."""
    from survey_infer.pipeline.clusters import start_client

    t0 = time.perf_counter()
    client, cluster = start_client(kind, workers, 1, dashboard=False, slurm_options=slurm_options)
    if cluster is not None:
        want = workers * (int(slurm_options.get("processes") or 1) if kind == "slurm" else 1)
        if kind == "cuda":
            want = 1
        client.wait_for_workers(want, timeout=float(os.environ.get("SCALING_JOIN_TIMEOUT", "600")))
    return client, cluster, time.perf_counter() - t0


def stop_cluster(client, cluster) -> None:
    client.close()
    if cluster is not None:
        cluster.close()


# ------------------------------------------------------------------------------------------------ pipeline runs


def simulated_store(out: Path, n: int, seed: int = 1) -> Path:
    """A simulated survey of ``n`` objects in ``out`` (made once with ``survey-infer simulate``, then reused)."""
    path = out / f"survey-n{n}-s{seed}.zarr"
    if not (path / "zarr.json").exists():
        if path.exists():
            shutil.rmtree(path)
        print(f"simulating {n} spectra -> {path}", flush=True)
        subprocess.run([sys.executable, "-m", "survey_infer.cli", "simulate", "--n", str(n), "--seed", str(seed),
                        "--out", str(path), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return path


def timed_run(client, store: Path, catalog: Path, args, block_objects: int) -> dict:
    """Run the pipeline once into a fresh ``catalog``; wall time and the runner's own summary."""
    from survey_infer.pipeline.runner import run_catalog

    if catalog.exists():
        shutil.rmtree(catalog)
    t0 = time.perf_counter()
    s = run_catalog(store, catalog, model=args.model, cluster=args.cluster, client=client,
                    mc_samples=args.mc_samples, seed=0, block_objects=block_objects, progress=False,
                    keep_pz=not args.no_pz, print_fn=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    if not s.ok:
        raise RuntimeError(f"run into {catalog} failed: {s.blocks_failed}")
    shutil.rmtree(catalog, ignore_errors=True)
    return {"wall_s": wall, "runner_s": s.seconds, "n_objects": s.n_objects, "n_blocks": s.n_blocks,
            "spectra_per_s": s.n_objects / wall, "stages": s.timings}


# ------------------------------------------------------------------------------------------------ report


def derive(results: list[dict]) -> None:
    """Add speed-up and efficiency (relative to the smallest worker count measured) in place."""
    base = min(results, key=lambda r: r["workers"])
    for r in results:
        w_rel = r["workers"] / base["workers"]
        if "strong" in r and "strong" in base:
            r["strong"]["speedup"] = base["strong"]["wall_s"] / r["strong"]["wall_s"]
            r["strong"]["efficiency"] = r["strong"]["speedup"] / w_rel
        if "weak" in r and "weak" in base:
            r["weak"]["efficiency"] = base["weak"]["wall_s"] / r["weak"]["wall_s"]


def table(results: list[dict]) -> str:
    head = (f"{'workers':>7} {'join s':>7} | {'strong s':>9} {'speedup':>7} {'eff':>5} | {'weak s':>7} {'eff':>5} |"
            f" {'burst ms/task':>13} {'bounded ms/task':>15} {'round trip ms':>13}")
    lines = [head, "-" * len(head)]

    def f(d, k, fmt):
        return format(d[k], fmt) if d and k in d else "-"

    for r in results:
        s, w, o = r.get("strong"), r.get("weak"), r.get("overhead")
        lines.append(
            f"{r['workers']:>7} {r['join_s']:>7.1f} | {f(s, 'wall_s', '9.1f'):>9} {f(s, 'speedup', '7.2f'):>7} "
            f"{f(s, 'efficiency', '5.2f'):>5} | {f(w, 'wall_s', '7.1f'):>7} {f(w, 'efficiency', '5.2f'):>5} | "
            f"{f(o, 'burst_ms_per_task', '13.2f'):>13} {f(o, 'bounded_ms_per_task', '15.2f'):>15} "
            f"{f(o, 'round_trip_ms_median', '13.2f'):>13}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> bool:
    if not any("strong" in r or "weak" in r for r in results):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["workers"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if all("strong" in r for r in results):
        ax1.plot(w, [r["strong"]["speedup"] for r in results], "o-", label="strong: measured")
        ax2.plot(w, [r["strong"]["efficiency"] for r in results], "o-", label="strong")
    ax1.plot(w, [x / w[0] for x in w], "k--", lw=1, label="ideal")
    if all("weak" in r for r in results):
        ax2.plot(w, [r["weak"]["efficiency"] for r in results], "s-", label="weak")
    ax2.axhline(1.0, color="k", ls="--", lw=1)
    ax1.set(xlabel="workers", ylabel="speed-up T(1)/T(W)", title="strong scaling")
    ax2.set(xlabel="workers", ylabel="efficiency", title="parallel efficiency", ylim=(0, 1.15))
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(w, [str(x) for x in w])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", default="local", help="local | cuda | slurm | tcp://HOST:PORT | SCHEDULER_FILE")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--mode", default="all", choices=["all", "overhead", "strong", "weak"],
                   help="what to measure (default all)")
    p.add_argument("--n", type=int, default=2000, help="objects in the strong-scaling survey (default 2000)")
    p.add_argument("--n-per-worker", type=int, default=600, help="objects per worker, weak scaling (default 600)")
    p.add_argument("--blocks-per-worker", type=int, default=4,
                   help="strong: blocks = this x the largest W; weak: this x W (default 4)")
    p.add_argument("--model", default="default", help="model for the pipeline runs (default: the shipped one)")
    p.add_argument("--mc-samples", type=int, default=20, help="MC samples T (default 20)")
    p.add_argument("--no-pz", action="store_true", help="do not store PDFs")
    p.add_argument("--overhead-tasks", type=int, default=2000, help="no-op tasks per overhead pattern")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="time the first run on a fresh cluster too (worker imports and model loading included)")
    p.add_argument("--out", default="benchmark-scaling", help="directory for surveys, JSON and PNG")
    try:
        from survey_infer.cli.run import add_slurm_arguments

        add_slurm_arguments(p)
    except ImportError:  # pragma: no cover
        pass
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workers = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    slurm_options = {}
    if args.cluster == "slurm":
        from survey_infer.cli.run import slurm_options_from_args

        slurm_options = slurm_options_from_args(args)
        slurm_options.pop("jobs", None)  # the worker counts are the point of the benchmark
    is_address = args.cluster not in ("local", "cuda", "slurm")
    if is_address and len(workers) > 1:
        print("an existing scheduler: measuring the single point it offers", file=sys.stderr)
        workers = workers[:1]
    do = {"overhead", "strong", "weak"} if args.mode == "all" else {args.mode}

    strong_store = simulated_store(out, args.n) if "strong" in do else None
    weak_stores = {w: simulated_store(out, args.n_per_worker * w) for w in workers} if "weak" in do else {}
    warm_store = simulated_store(out, 64) if args.warmup and do & {"strong", "weak"} else None
    strong_block = max(1, math.ceil(args.n / (args.blocks_per_worker * max(workers))))
    weak_block = max(1, math.ceil(args.n_per_worker / args.blocks_per_worker))

    meta = {"cluster": args.cluster, "workers": workers, "n": args.n, "n_per_worker": args.n_per_worker,
            "mc_samples": args.mc_samples, "model": args.model, "strong_block_objects": strong_block,
            "weak_block_objects": weak_block, "cpu_count": os.cpu_count(), "host": os.uname().nodename,
            "slurm_options": slurm_options, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    results = []
    for w in workers:
        print(f"--- {w} worker(s) on {args.cluster}", flush=True)
        client, cluster, join_s = start_cluster(args.cluster, w, slurm_options)
        actual = len(client.scheduler_info()["workers"])
        r: dict = {"workers": w if not is_address else actual, "join_s": join_s,
                   "load_avg_1min": os.getloadavg()[0]}  # other load on the machine distorts the timings
        try:
            if args.warmup and ("strong" in do or "weak" in do):
                # untimed: imports torch and loads the model on every worker, fills the OS page cache
                timed_run(client, warm_store, out / f"cat-warmup-w{w}.zarr", args, max(1, 64 // (2 * w)))
            if "overhead" in do:
                r["overhead"] = measure_overhead(client, args.overhead_tasks)
                print(f"    overhead {r['overhead']}", flush=True)
            if "strong" in do:
                r["strong"] = timed_run(client, strong_store, out / f"cat-strong-w{w}.zarr", args, strong_block)
                print(f"    strong  {r['strong']['wall_s']:.1f} s", flush=True)
            if "weak" in do:
                r["weak"] = timed_run(client, weak_stores[w], out / f"cat-weak-w{w}.zarr", args, weak_block)
                print(f"    weak    {r['weak']['wall_s']:.1f} s", flush=True)
        finally:
            stop_cluster(client, cluster)
        results.append(r)

    derive(results)
    print()
    print(table(results))
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    print(f"\nwrote {out / 'scaling.json'}")
    if plot(results, out / "scaling.png", f"survey-infer run on {args.cluster} ({meta['host']}, "
                                          f"{meta['cpu_count']} CPUs, T={args.mc_samples})"):
        print(f"wrote {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
