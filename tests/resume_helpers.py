"""Shared helpers of the resume and fault tests (real processes: the ``survey-infer`` CLI in subprocesses)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

N, BLOCK, T = 300, 32, 4
N_BLOCKS = -(-N // BLOCK)
QUIET = dict(progress=False, print_fn=lambda *a: None)


def reference_run(store: Path, out: Path, model: Path):
    """An uninterrupted in-process run (blocks of BLOCK, T MC samples, seed 0): what every fault must reproduce."""
    from survey_infer.pipeline.runner import run_catalog

    return run_catalog(store, out, model=model, cluster="inprocess", mc_samples=T, seed=0, block_objects=BLOCK,
                       **QUIET)


def run_args(store: Path, cat: Path, model: Path, *extra: str) -> list[str]:
    return ["run", "--input", str(store), "--output", str(cat), "--model", str(model), "--mc-samples", str(T),
            "--block-objects", str(BLOCK), "--no-progress", "--json", *map(str, extra)]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``survey-infer ARGS`` in the background, output to ``log``."""
    f = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "survey_infer", *args], stdout=f, stderr=subprocess.STDOUT)


def summary_of(stdout: str) -> dict:
    """The ``--json`` summary at the end of a run's stdout."""
    i = stdout.rfind("\n{\n") if not stdout.startswith("{\n") else -1
    return json.JSONDecoder().raw_decode(stdout, i + 1)[0]


def markers(cat: Path, job: str = "main") -> int:
    """Blocks with a done-marker of ``job`` (a glob pattern)."""
    return len(list((cat / "_markers").glob(f"{job}/block-*.json")))


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.02) -> None:
    t0 = time.time()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
