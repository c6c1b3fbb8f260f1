"""GPU path (issue 15): dask-cuda workers where a CUDA GPU exists, the clear error without one, and the staged
device check (``benchmarks/gpu_check.sh``) whose CPU dry run runs here in CI.

Tolerances stated for CPU vs GPU on the shipped model (IEEE fp32 on both, different kernels and summation
orders): per-bin PDF and ``p_outside`` within 1e-3 absolute, ≥ 99% of rows within 1e-3 in z, the same NaN rows.
On one GPU (same model, CUDA, cuDNN, B, settings) the catalog is bit-identical whatever the blocking.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_catalogs_identical, cli

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "benchmarks" / "gpu_check.sh"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU: the error path does not apply")
def test_cuda_cluster_without_gpu_is_a_clear_error(small_survey, tiny_model, tmp_path):
    r = cli("run", "--input", small_survey, "--output", tmp_path / "c.zarr", "--model", tiny_model,
            "--cluster", "cuda", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cuda" in r.stderr.lower() and "Traceback" not in r.stderr


def _check(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(CHECK), *args, "--cache", str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_gpu_check_dry_run_writes_every_stage(small_survey, tiny_model, tmp_path):
    """The device check, ``--device cpu`` with a tiny model and store: every stage runs and leaves its record."""
    r = _check(tmp_path, "--device", "cpu", "--n", "64", "--T", "2", "--model", str(tiny_model), "--base",
               str(small_survey))
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "gpu.json").read_text())
    assert list(summary["stages"]) == ["env", "store", "end_to_end", "network", "screening", "preprocess", "decode",
                                       "pytest"]
    stages = tmp_path / "cache" / "stages"
    for name, rec in summary["stages"].items():
        if name != "pytest":
            assert rec == json.loads((stages / f"stage-{name}.json").read_text()), name
        assert rec["status"] == ("skipped" if name == "pytest" else "ok"), (name, rec)
    # the device tool returns at most 8 files from $OUT: everything is in gpu.json, beside a few small files
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["check.log", "gpu.json", "image.txt", "install.json"], files
    assert summary["install"]["status"] == "nothing to install" and summary["image"]["torch"]
    assert "gpu-check stage end_to_end: OK" in (out / "check.log").read_text()
    st = summary["stages"]
    assert st["env"]["fingerprint"]["device_class"] == "cpu" and st["env"]["fingerprint"]["micro_batch"] == 32
    assert st["env"]["gpu_fingerprint"] == {}  # the worker-side GPU record adds nothing on the CPU
    assert st["store"]["n"] == 64 and st["store"]["simulated"] == 0
    assert st["network"]["repeat_bit_identical"] is True and st["network"]["micro_batch"] == 32
    assert st["end_to_end"]["n_per_run"] == 64 and st["end_to_end"]["sustained_spectra_per_s"] > 0
    scr = st["screening"]  # torch screening vs numpy on the same PDFs: on the CPU the same bits
    assert scr["agreement"]["bit_identical"] is True and scr["agreement"]["zwarn_equal_fraction"] == 1.0
    assert scr["device_spectra_per_s"] > 0 and scr["numpy_one_core_spectra_per_s"] > 0
    assert scr["window_spectra_per_s"] > 0 and scr["window_rows"] == 256
    assert summary["limiting_ceiling"] in summary["ceilings"] and len(summary["ceilings"]) == 4
    assert "screening, torch on the device" in summary["ceilings"]
    assert summary["target_spectra_per_s"] == 50_000 and summary["elapsed_s"] < 470
    assert (out / "image.txt").read_text().startswith("torch ")
    assert json.loads((out / "install.json").read_text())["status"] == "nothing to install"
    assert "gpu-check stage end_to_end: OK" in r.stderr


def test_gpu_check_time_box_is_recorded_and_the_rest_skipped(tmp_path):
    """A stage that overruns its box is recorded as ``timeout``; stages past the budget are ``skipped``."""
    r = _check(tmp_path, "--device", "cpu", "--n", "32", "--box", "env=0.05", "--budget-s", "5.02", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert summary["stages"]["env"]["status"] == "timeout"
    assert "0 s box" in summary["stages"]["env"]["why"]
    assert {summary["stages"][s]["status"] for s in ("store", "network", "end_to_end")} == {"skipped"}
    assert "gpu-check stage env: TIMEOUT" in r.stderr


def test_gpu_check_store_stops_tiling_inside_its_box_and_later_stages_use_what_it_tiled(small_survey, tmp_path):
    """On a slow disk the store stage commits the rounds it tiled (n_objects = those rows) instead of running
    past its box and leaving no store; the stages after it size themselves to the rows the store holds."""
    import sys

    args = [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--n", "64", "--base", str(small_survey),
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    r = subprocess.run([*args, "--stage", "store", "--stage-box", "15"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads((tmp_path / "cache" / "stages" / "stage-store.json").read_text())
    assert rec == json.loads((tmp_path / "out" / "stage-current.json").read_text())
    assert rec["status"] == "ok" and rec["stopped_early"] is True and rec["n"] == 32 and rec["n_requested"] == 64
    store = tmp_path / "cache" / "check-store-n64-b64.zarr"
    assert json.loads((store / "zarr.json").read_text())["attributes"]["n_objects"] == 32
    r = subprocess.run([*args, "--stage", "decode"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "cache" / "stages" / "stage-decode.json").read_text())["n"] == 32


def test_gpu_check_time_box_kills_the_stage_with_its_children():
    """A time-boxed stage is killed with its whole process group: a child that keeps the output pipes open (a
    Dask worker, a pytest run) neither outlives the box nor makes the check wait for it."""
    import time

    from benchmarks.gpu import _run_in_group

    t0 = time.time()
    code, out, err, timed_out = _run_in_group(["bash", "-c", "echo started; sleep 60 & sleep 60"], 1.0)
    assert timed_out and time.time() - t0 < 15
    code, out, err, timed_out = _run_in_group(["bash", "-c", "echo hi; echo oops >&2; exit 3"], 30)
    assert (code, out, err, timed_out) == (3, "hi\n", "oops\n", False)


def test_stopping_the_check_stops_the_running_stage(tmp_path):
    """``timeout`` in gpu_check.sh signals the check only; the stage runs in its own session, so the check kills
    its group on SIGTERM (else the stage would run on after the command ended)."""
    import signal
    import sys
    import time

    pid_file = tmp_path / "stage.pid"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from benchmarks.gpu import _kill_groups_on_term, _run_in_group\n"
            "_kill_groups_on_term()\n"
            f"_run_in_group(['bash', '-c', 'echo $$ > {pid_file}; exec sleep 60'], 100)\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    t0 = time.time()
    while not pid_file.exists() and time.time() - t0 < 30:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 124
    for _ in range(50):  # gone, or a zombie waiting to be reaped
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"stage process {pid} still running after the check was stopped")


# ---------------------------------------------------------------------------------------------- on the GPU
@pytest.mark.gpu
def test_torch_masks_on_the_gpu_are_the_numpy_bits():
    import torch

    from survey_infer.model import mc
    from survey_infer.model import torch_masks as tm

    oid = np.r_[np.random.default_rng(0).integers(-2 ** 63, 2 ** 63 - 1, 4096, dtype=np.int64), 0, -1]
    for seed, stream, p in ((0, 1, 0.2), (77, 4, 0.5), (-3, 2, 0.1)):
        a = mc.keep_masks(seed, oid, 50, 32, p, stream)
        b = tm.keep_masks(seed, torch.from_numpy(oid).cuda(), 50, 32, p, stream).cpu().numpy()
        assert np.array_equal(a, b), (seed, stream, p)


@pytest.mark.gpu
def test_shipped_model_gpu_matches_itself_and_cpu_within_tolerance(small_survey, tmp_path):
    from survey_infer.catalog.store import open_catalog
    from survey_infer.pipeline.runner import run_catalog

    kw = dict(mc_samples=8, seed=3, progress=False, print_fn=lambda *a: None)
    a = run_catalog(small_survey, tmp_path / "gpu_a.zarr", cluster="cuda", **kw)
    b = run_catalog(small_survey, tmp_path / "gpu_b.zarr", cluster="cuda", block_objects=96, **kw)
    assert a.ok and b.ok
    assert_catalogs_identical(tmp_path / "gpu_a.zarr", tmp_path / "gpu_b.zarr")  # GPU vs GPU: bits
    c = run_catalog(small_survey, tmp_path / "cpu.zarr", cluster="inprocess", **kw)
    assert c.ok
    g, cpu = open_catalog(tmp_path / "gpu_a.zarr"), open_catalog(tmp_path / "cpu.zarr")
    assert g.attrs["fingerprint"]["device_class"] == "cuda"
    zg, zc = g["z"].values, cpu["z"].values
    assert np.array_equal(np.isnan(zg), np.isnan(zc))  # the same NaN rows
    ok = ~np.isnan(zc)
    assert (np.abs(zg[ok] - zc[ok]) < 1e-3).mean() >= 0.99
    assert np.nanmax(np.abs(g["pz"].values.astype(np.float64) - cpu["pz"].values)) < 1e-3
    assert np.nanmax(np.abs(g["p_outside"].values - cpu["p_outside"].values)) < 1e-3


@pytest.mark.gpu
def test_resuming_a_cpu_catalog_on_the_gpu_is_refused(small_survey, tmp_path):
    cat = tmp_path / "c.zarr"
    r = cli("run", "--input", small_survey, "--output", cat, "--cluster", "inprocess", "--mc-samples", "4",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("run", "--input", small_survey, "--output", cat, "--cluster", "cuda", "--mc-samples", "4",
            "--no-progress")
    assert r.returncode == 2 and "device_class" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.gpu
def test_hot_path_on_gpu_is_close_to_cpu_and_repeatable(tmp_path):
    import torch
    from conftest import make_tiny_model

    from survey_infer.model.checkpoint import load_model
    from survey_infer.model.device import configure_numerics
    from survey_infer.model.hotpath import run_network_device

    configure_numerics("cuda")
    rng = np.random.default_rng(0)
    m_cpu = load_model(make_tiny_model(tmp_path / "m"))
    m_gpu = load_model(tmp_path / "m", device="cuda")
    W = m_cpu.instrument.n_wave
    x = rng.normal(0, 1, (300, 5, W)).astype(np.float32)
    sc = rng.normal(0, 1, (300, m_cpu.cfg.n_scalars)).astype(np.float32)
    oid, rows = np.arange(300, dtype=np.int64), np.arange(300)
    a = run_network_device(m_gpu, x, sc, oid, rows, 8, 1, "cuda", micro_batch=1024)
    b = run_network_device(m_gpu, x, sc, oid, rows, 8, 1, "cuda", micro_batch=1024)
    ref = run_network_device(m_cpu, x, sc, oid, rows, 8, 1, "cpu", micro_batch=1024)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k
        np.testing.assert_allclose(a[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"


@pytest.mark.gpu
def test_screening_on_the_gpu_is_close_to_numpy_and_repeatable():
    """Torch screening on the GPU vs numpy on the host, same PDFs: zwarn and peak counts equal, statistics and
    intervals within 1e-12 (CUDA log ≤ 1 ulp, scan order of cumsum), repeatable bit for bit, row-independent."""
    import torch

    from survey_infer.model import torch_screening as ts
    from survey_infer.model.device import configure_numerics
    from survey_infer.model.zgrid import ZGrid
    from survey_infer.screening import pdf_statistics

    configure_numerics("cuda")  # deterministic algorithms, as on a GPU worker (torch.cumsum would raise)
    zg = ZGrid()
    rng = np.random.default_rng(4)
    pz = rng.random((3000, zg.n)) ** rng.uniform(1, 400, (3000, 1))
    pz /= pz.sum(1, keepdims=True)
    zc = torch.from_numpy(zg.centres).cuda()
    ref = pdf_statistics(pz, zg.centres, zg.dz, {})
    a = ts.pdf_statistics(torch.from_numpy(pz).cuda(), zc, zg.dz, {})
    b = ts.pdf_statistics(torch.from_numpy(pz[1000:]).cuda(), zc, zg.dz, {})
    for k in ref:
        got = a[k].cpu().numpy()
        assert np.array_equal(got[1000:], b[k].cpu().numpy()), k  # the other rows change nothing
        if ref[k].dtype.kind == "f":
            np.testing.assert_allclose(got, ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
        else:
            assert np.array_equal(got, ref[k]), k


@pytest.mark.gpu
def test_gpu_fingerprint_on_the_gpu():
    import torch

    from survey_infer.model.device import GPU_FINGERPRINT_KEYS, gpu_fingerprint

    fp = gpu_fingerprint("cuda")
    assert tuple(fp) == GPU_FINGERPRINT_KEYS and fp["gpu"] == torch.cuda.get_device_name(0)
    assert fp["fp32_precision"] == "ieee" and fp["sm_count"] > 0 and fp["micro_batch"] == 1024


def test_slurm_gpu_jobs_get_cores_memory_and_run_the_model_on_the_gpu():
    """Issue 15 point 4: a GPU job gets 8 cores (threads) and 32 GiB per GPU unless given, and the device is cuda."""
    pytest.importorskip("dask_jobqueue")
    from survey_infer.pipeline.clusters import slurm as si_slurm

    lines = si_slurm.describe_job_script(1, gpus_per_job=2).splitlines()
    assert "#SBATCH --gres=gpu:2" in lines and "#SBATCH --cpus-per-task=16" in lines
    assert "#SBATCH --mem=64G" in lines
    assert "dask cuda worker" in lines[-1] and "--nthreads 16" in lines[-1] and "--memory-limit 64.00GiB" in lines[-1]
    # explicit cores / memory win
    lines = si_slurm.describe_job_script(1, gpus_per_job=1, cores=4, memory="8GiB").splitlines()
    assert "#SBATCH --cpus-per-task=4" in lines and "#SBATCH --mem=8G" in lines
    # CPU jobs keep their defaults
    lines = si_slurm.describe_job_script(1).splitlines()
    assert "#SBATCH --cpus-per-task=1" in lines and "#SBATCH --mem=4G" in lines and "cuda" not in lines[-1]
    assert si_slurm.slurm_device({"gpus_per_job": 1}) == "cuda"
    assert si_slurm.slurm_device({}) == "cpu" and si_slurm.slurm_device({"gpus_per_job": 0}) == "cpu"


def test_one_allocation_gpu_job_runs_the_model_on_the_gpu(monkeypatch, tmp_path):
    """deploy/survey-infer-run.sbatch with SURVEY_INFER_WORKER=gpu: the client (a scheduler-file cluster, device
    "cpu" by default) gets SURVEY_INFER_DEVICE=cuda before it starts."""
    from survey_infer.pipeline.clusters import cluster_device

    text = (REPO / "deploy" / "survey-infer-run.sbatch").read_text()
    branch = text.split('if [ "${SURVEY_INFER_WORKER:-cpu}" = gpu ]; then', 1)[1].split("\nelse", 1)[0]
    script = tmp_path / "branch.sh"
    script.write_text(f'PYTHON=python3\nSURVEY_INFER_WORKER=gpu\nif true; then{branch}\nfi\necho "$SURVEY_INFER_DEVICE"\n')
    env = {k: v for k, v in os.environ.items() if k != "SURVEY_INFER_DEVICE"}
    assert subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env).stdout.strip() == "cuda"
    monkeypatch.delenv("SURVEY_INFER_DEVICE", raising=False)
    assert cluster_device(str(tmp_path / "scheduler.json")) == "cpu"
    monkeypatch.setenv("SURVEY_INFER_DEVICE", "cuda")
    assert cluster_device(str(tmp_path / "scheduler.json")) == "cuda"
