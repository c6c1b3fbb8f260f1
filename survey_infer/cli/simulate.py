"""``survey-infer simulate``: its options and how they become a library call (write a simulated MOONS survey
store with :func:`survey_infer.io.simulated.simulate_survey`)."""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand and its options to ``subparsers``; return its parser."""
    p = subparsers.add_parser("simulate", help="simulate a realistic MOONS survey into a Zarr store",
                              description="Simulate N seeded, reproducible MOONS LR spectra with truth columns.")
    p.add_argument("--n", type=int, required=True, help="number of spectra")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical bytes)")
    p.add_argument("--out", required=True, help="output store (directory)")
    p.add_argument("--chunk-objects", type=int, default=256, help="spectra per store chunk / task")
    p.add_argument("--interloper-fraction", type=float, default=None)
    p.add_argument("--passive-fraction", type=float, default=None)
    p.add_argument("--airmass", type=float, default=None)
    p.add_argument("--families", default=None,
                   help="comma-separated continuum families to draw (default all: kcorrect,m11_marcs,m11_stelib,"
                        "mastar,bpass)")
    p.add_argument("--exclude-family", default=None, help="draw every family but this one (leave-one-family-out)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1 = in this process)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Check the options, build the :class:`~survey_infer.simulate.simulator.SimConfig`, write the store.

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    UserError
        A non-positive ``--n``/``--chunk-objects``, both ``--families`` and ``--exclude-family``, an unknown
        family, or a configuration that fails :meth:`SimConfig.validate`.
    """
    from ..errors import UserError
    from ..simulate.simulator import SimConfig
    from ..io.simulated import simulate_survey

    if args.n <= 0:
        raise UserError(f"--n must be positive, got {args.n}")
    if args.chunk_objects <= 0:
        raise UserError(f"--chunk-objects must be positive, got {args.chunk_objects}")
    cfg = SimConfig()
    upd = {}
    if args.interloper_fraction is not None:
        upd["interloper_fraction"] = args.interloper_fraction
    if args.passive_fraction is not None:
        upd["passive_fraction"] = args.passive_fraction
    if args.airmass is not None:
        upd["airmass"] = args.airmass
    if args.families is not None and args.exclude_family is not None:
        raise UserError("give --families or --exclude-family, not both")
    if args.families is not None:
        upd["families"] = tuple(f.strip() for f in args.families.split(",") if f.strip())
    if args.exclude_family is not None:
        from ..simulate.simulator import FAMILIES

        if args.exclude_family not in FAMILIES:
            raise UserError(f"--exclude-family {args.exclude_family!r}: unknown family; known: {', '.join(FAMILIES)}")
        upd["families"] = tuple(f for f in FAMILIES if f != args.exclude_family)
    cfg = replace(cfg, **upd)
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    scheduler = "processes" if args.workers > 1 else "synchronous"
    t0 = time.perf_counter()
    path = simulate_survey(args.n, args.seed, args.out, config=cfg, chunk_objects=args.chunk_objects,
                           overwrite=args.overwrite, scheduler=scheduler, num_workers=args.workers,
                           progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(f"wrote {args.n} spectra to {path} in {dt:.1f} s ({args.n / dt:.0f} spectra/s)")
    return 0
