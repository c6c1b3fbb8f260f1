"""``python -m benchmarks``: every benchmark this machine can run, one table with the targets beside the values.

On the 2-core development VM the whole set takes about 15–20 minutes (the first run also simulates the
12,000-spectrum benchmark store, ≈ 2 minutes, kept in the cache for later runs). It prints the table (PASS /
MISS against each DESIGN §9 target), and writes ``benchmarks/results/latest.json`` (hardware, settings, every
measured figure), ``latest.md`` (the table in Markdown, for docs/benchmarks.md) and the PNG figures.

    python -m benchmarks                      # everything (measure on a quiet machine)
    python -m benchmarks --quick              # smoke test of every code path (~5 min; numbers meaningless)
    python -m benchmarks --only mc_cost,peers # a subset
    python -m benchmarks.gpu                  # on the GPU machine

Modules (run in this order; later ones reuse earlier results): model_compute, mc_cost, io_limit,
pipeline_efficiency, peers, capacity, gpu.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from . import RESULTS, add_common_arguments, config_from_args, format_table, hardware, log, row, save_json

MODULES = ("model_compute", "mc_cost", "io_limit", "pipeline_efficiency", "peers", "capacity", "gpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(MODULES)}")
    p.add_argument("--skip", default="", help="comma-separated modules to leave out")
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    todo = [m for m in (args.only.split(",") if args.only else MODULES) if m and m not in args.skip.split(",")]
    unknown = [m for m in todo if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    hw = hardware()
    log(f"survey-infer benchmarks on {hw['cpu']} ({hw['cores']} cores, {hw['memory_gib']} GiB), "
        f"{hw['date_utc']}; cache {cfg.cache}; results -> {cfg.out}" + (" [QUICK: smoke sizes]" if cfg.quick else ""))
    cfg.out.mkdir(parents=True, exist_ok=True)
    from . import benchmark_model

    from survey_infer.model.checkpoint import model_sha256

    mdir, mkind = benchmark_model(cfg)
    hw["model"] = {"dir": mdir, "kind": mkind, "sha256": model_sha256(mdir)[:16]}
    log(f"model: {mdir} ({mkind}, sha256 {hw['model']['sha256']})")
    state: dict = {}
    rows, details, durations, figures = [], {}, {}, []
    t_all = time.perf_counter()
    for name in todo:
        log(f"== {name}")
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
            res = mod.run(cfg, state)
            rows += res["rows"]
            details[name] = res["details"]
            figures += [str(cfg.out / f) for f in res["details"].get("figures", [])] if isinstance(
                res["details"], dict) else []
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
            traceback.print_exc()
            rows.append(row(name, "FAILED", None, "", "", None, f"{type(exc).__name__}: {exc}"[:200]))
            details[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        durations[name] = round(time.perf_counter() - t0, 1)
        log(f"   {name}: {durations[name]:.0f} s")
        # keep partial results on disk as we go
        save_json(cfg.out / "latest.json", {"hardware": hw, "config": cfg.to_dict(), "rows": rows,
                                            "durations_s": durations, "details": details, "complete": False})
    total = time.perf_counter() - t_all
    hw_end = hardware()
    out = {"hardware": hw, "loadavg_end": hw_end["loadavg"], "config": cfg.to_dict(), "rows": rows,
           "durations_s": durations, "total_s": round(total, 1), "figures": figures, "details": details,
           "complete": True}
    save_json(cfg.out / "latest.json", out)
    head = (f"survey-infer benchmarks — {hw['date_utc']} — {hw['cpu']}, {hw['cores']} cores, {hw['memory_gib']} GiB"
            f"{', ' + hw['gpu'] if hw.get('gpu') else ', no GPU'}; torch {hw['torch']}; commit {hw['commit']}; "
            f"model {hw['model']['kind']} ({hw['model']['sha256']}); {total / 60:.1f} min")
    (cfg.out / "latest.md").write_text(head + "\n\n" + format_table(rows, markdown=True) + "\n")
    print()
    print(head)
    print()
    print(format_table(rows))
    print(f"\nwrote {cfg.out / 'latest.json'}, {cfg.out / 'latest.md'}" + (f" and {len(figures)} figure(s)" if figures
                                                                          else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
