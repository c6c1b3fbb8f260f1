"""What a run tells its user at the end: :class:`RunSummary` and its text form."""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class RunSummary:
    """The outcome of one ``run`` (one attempt of one job), as :func:`~survey_infer.pipeline.runner.run_catalog`
    returns it. Times in seconds, rates in spectra per second, memory in MB."""

    catalog: str
    job: str
    run_id: int
    epoch: int
    n_objects: int
    n_blocks: int
    blocks_done_before: int
    blocks_computed: int
    blocks_failed: list = field(default_factory=list)
    seconds: float = 0.0
    spectra_per_s: float = 0.0
    flag_counts: dict = field(default_factory=dict)
    n_reliable: int = 0
    timings: dict = field(default_factory=dict)
    dashboard: str | None = None
    worker_max_rss_mb: float = 0.0
    stopped: str | None = None  # why the driver stopped before every block was attempted (cluster gone)

    @property
    def ok(self) -> bool:
        """Every block of the job validated at the end, and the run was not stopped by a lost cluster."""
        return not self.blocks_failed and not self.stopped


def print_summary(s: RunSummary, out: TextIO = sys.stdout) -> None:
    """Print a run's summary (objects, blocks, time, stages, memory, flags, failures and how to resume)."""
    print(f"\ncatalog   {s.catalog}  (job {s.job}, run_id {s.run_id}, epoch {s.epoch})", file=out)
    print(f"objects   {s.n_objects:,}   blocks {s.n_blocks}: {s.blocks_done_before} already done, "
          f"{s.blocks_computed} computed, {len(s.blocks_failed)} failed", file=out)
    if s.blocks_computed == 0 and not s.blocks_failed and not s.stopped:
        print(f"time      {s.seconds:.1f} s   (nothing to compute: every block was already done)", file=out)
        return
    print(f"time      {s.seconds:.1f} s   ({s.spectra_per_s:,.0f} spectra/s end to end)", file=out)
    if s.timings:
        tot = sum(s.timings.values())
        print("stages    " + "  ".join(f"{k} {v / tot:.0%}" for k, v in sorted(s.timings.items(), key=lambda x: -x[1])),
              file=out)
    if s.worker_max_rss_mb:
        print(f"memory    peak worker RSS {s.worker_max_rss_mb:,.0f} MB", file=out)
    flags = ", ".join(f"{k}={v}" for k, v in s.flag_counts.items() if v)
    print(f"reliable  {s.n_reliable:,} computed objects have z_reliable; flags: {flags or 'none'}", file=out)
    for blocks, reason in group_failures(s.blocks_failed):
        print(f"FAILED    {blocks}: {reason}", file=out)
    if s.stopped:
        print(f"FAILED    the run stopped: {s.stopped}", file=out)
    if s.blocks_failed or s.stopped:
        print("Fix the cause and re-run the same command: only the failed/pending blocks are computed.", file=out)
        print(f"resume    {resume_command()}", file=out)


def group_failures(failed: list[dict]) -> list[tuple[str, str]]:
    """Failures as (``"block 3"`` / ``"blocks 0-12 (13)"``, reason): consecutive blocks with the same reason share
    one line (a lost cluster fails every block left with one reason)."""
    out: list[list] = []
    for f in sorted(failed, key=lambda f: f["block"]):
        if out and out[-1][2] == f["reason"] and out[-1][1] == f["block"] - 1:
            out[-1][1] = f["block"]
        else:
            out.append([f["block"], f["block"], f["reason"]])
    return [(f"block {a}" if a == b else f"blocks {a}-{b} ({b - a + 1})", r) for a, b, r in out]


def resume_command() -> str:
    """The command line that resumes this run (the same command)."""
    return "survey-infer " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "the same survey-infer run command"
