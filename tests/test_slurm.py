"""Slurm deployment on a real Slurm: dask-jobqueue worker jobs, lost jobs, the one-allocation sbatch script.

The tests marked ``slurm`` need a Slurm controller that answers ``sinfo`` from this machine. They are skipped
unless one answers, or ``SURVEY_INFER_TEST_SLURM=1`` is set; with the flag set they wait for the local Slurm that
``deploy/local-slurm/start.sh --background`` is starting (its ready-file), and fail instead of skipping when it
does not come up. Nothing is ever installed from here.

Option translation and the clear error without dask-jobqueue are tested without Slurm.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest

from survey_infer.cli.run import add_slurm_arguments, slurm_options_from_args
from survey_infer.pipeline.clusters import slurm as si_slurm

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("SURVEY_INFER_SLURM_DIR", "/tmp/survey-infer-slurm"))
FLAG = os.environ.get("SURVEY_INFER_TEST_SLURM", "") not in ("", "0")
WAIT_S = float(os.environ.get("SURVEY_INFER_SLURM_WAIT", "900"))


# ------------------------------------------------------------------------------------------------ helpers
def _sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _job_state(job_id: str) -> str:
    """State of a job (squeue while it is known there, else scontrol), '' when Slurm forgot it."""
    out = _sh("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip()
    if out:
        return out.splitlines()[0]
    out = _sh("scontrol", "show", "job", job_id, check=False)
    for tok in out.split():
        if tok.startswith("JobState="):
            return tok.split("=", 1)[1]
    return ""


def _job_field(job_id: str, field: str) -> str:
    out = _sh("scontrol", "show", "job", job_id, check=False)
    for tok in out.split():
        if tok.startswith(field + "="):
            return tok.split("=", 1)[1]
    return ""


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _wait_for_local_slurm() -> None:
    """With the flag set: wait for deploy/local-slurm/start.sh --background (ready/failed files)."""
    if not STATE_DIR.exists():
        return  # not our local Slurm: the machine's own Slurm must answer
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if (STATE_DIR / "failed").exists():
            pytest.fail(f"local Slurm failed to start: {(STATE_DIR / 'failed').read_text().strip()} "
                        f"(log: {STATE_DIR / 'start.log'})")
        if (STATE_DIR / "ready").exists():
            return
        time.sleep(1)
    pytest.fail(f"local Slurm not ready after {WAIT_S:.0f} s (log: {STATE_DIR / 'start.log'})")


@pytest.fixture(scope="module")
def slurm_env():
    """A reachable Slurm, or skip (fail when SURVEY_INFER_TEST_SLURM=1 asked for one)."""
    mp = pytest.MonkeyPatch()
    if FLAG:
        _wait_for_local_slurm()
    # the local Slurm's config, when /etc/slurm/slurm.conf does not point to it
    conf = STATE_DIR / "slurm.conf"
    if "SLURM_CONF" not in os.environ and conf.exists() and not Path("/etc/slurm/slurm.conf").exists():
        mp.setenv("SLURM_CONF", str(conf))
    if not si_slurm.slurm_available():
        mp.undo()
        if FLAG:
            pytest.fail("SURVEY_INFER_TEST_SLURM=1 but sinfo does not answer")
        pytest.skip("no Slurm answers sinfo (set SURVEY_INFER_TEST_SLURM=1 to require one)")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        mp.undo()
        if FLAG:
            pytest.fail("SURVEY_INFER_TEST_SLURM=1 but dask-jobqueue is not installed (pip install -e '.[slurm]')")
        pytest.skip("dask-jobqueue not installed")
    yield
    mp.undo()


@pytest.fixture
def jobqueue():
    return pytest.importorskip("dask_jobqueue")


# ------------------------------------------------------------------------------------------------ no Slurm needed
def test_cli_options_become_job_script(jobqueue):
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    args = parser.parse_args([
        "--slurm-jobs", "3", "--slurm-cores", "4", "--slurm-memory", "16GiB", "--slurm-walltime", "02:00:00",
        "--slurm-partition", "gpu", "--slurm-account", "astro", "--slurm-gpus-per-job", "1",
        "--slurm-extra-directive=--qos=long", "--slurm-skip-directive=--mem", "--slurm-lifetime", "110m",
        "--slurm-lifetime-stagger", "4m", "--slurm-local-directory", "$TMPDIR",
    ])
    opts = slurm_options_from_args(args)
    assert opts["jobs"] == 3 and opts["gpus_per_job"] == 1
    n_jobs, kw = si_slurm.cluster_kwargs(8, **opts)
    assert n_jobs == 3  # --slurm-jobs wins over the positional (--workers)
    script = si_slurm.describe_job_script(8, **opts)
    lines = script.splitlines()
    assert "#SBATCH -p gpu" in lines and "#SBATCH -A astro" in lines
    assert "#SBATCH --cpus-per-task=4" in lines and "#SBATCH -t 02:00:00" in lines
    assert "#SBATCH --gres=gpu:1" in lines and "#SBATCH --qos=long" in lines
    assert not any(line.startswith("#SBATCH --mem") for line in lines)  # skipped for --mem-per-gpu sites
    cmd = lines[-1]
    assert f"{sys.executable} -m dask cuda worker" in cmd  # the `dask cuda` entry point of dask-cuda
    assert '--local-directory "$TMPDIR"' in cmd and "--nthreads 4" in cmd  # quoted; expanded on the node
    # dask-cuda's worker has no --lifetime: the GPU workers get it from the dask config in the environment
    assert "--lifetime" not in cmd
    assert "export DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION=110m" in lines
    assert "export DASK_DISTRIBUTED__WORKER__LIFETIME__STAGGER=4m" in lines
    # CPU jobs: the dask worker's own flags
    cpu = si_slurm.describe_job_script(2, lifetime="55m", lifetime_stagger="5m").splitlines()[-1]
    assert "-m distributed.cli.dask_worker" in cpu and "--lifetime 55m --lifetime-stagger 5m" in cpu


def test_slurm_options_are_listed_once():
    """The --slurm-* flags, the keyword options and the site YAML keys all come from one list (SLURM_OPTIONS)."""
    import yaml

    from survey_infer.pipeline.clusters.slurm_options import SLURM_OPTIONS

    defaults = yaml.safe_load((REPO / "survey_infer" / "slurm.yaml").read_text())["survey-infer"]["slurm"]
    assert set(defaults) == set(si_slurm.OPTION_KEYS.values()) == {o.key for o in SLURM_OPTIONS}
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest.startswith("slurm_")}
    on_cli = [o for o in SLURM_OPTIONS if o.help is not None]
    assert len(flags) == len(on_cli) == 18
    for o in on_cli:
        value = (o.choices or ("7" if o.type is int else "x",))[0]
        opts = slurm_options_from_args(parser.parse_args([f"--slurm-{o.flag or o.key}", str(value)]))
        assert list(opts) == [o.name], (o.name, opts)
        assert opts[o.name] == ([value] if o.repeat else o.type(value))


def test_site_config_and_precedence(jobqueue):
    # defaults from survey_infer/slurm.yaml
    _, kw = si_slurm.cluster_kwargs()
    assert kw["cores"] == 1 and kw["memory"] == "4GiB" and kw["walltime"] == "01:00:00"
    assert "worker_command" not in kw  # CPU jobs: dask-jobqueue's own distributed.cli.dask_worker
    # a site YAML (merged into dask.config) overrides them; keyword options override the site
    site = {"survey-infer": {"slurm": {"partition": "cpu", "cores": 8, "memory": "30GiB",
                                       "extra-directives": ["--constraint=skylake"], "jobs": 5}}}
    with dask.config.set(site):
        n, kw = si_slurm.cluster_kwargs()
        assert n == 5 and kw["queue"] == "cpu" and kw["cores"] == 8 and kw["memory"] == "30GiB"
        assert kw["job_extra_directives"] == ["--constraint=skylake"]
        n, kw = si_slurm.cluster_kwargs(2, cores=2, threads_per_worker=6)
        assert n == 2 and kw["cores"] == 2  # explicit cores beat threads_per_worker
        n, kw = si_slurm.cluster_kwargs(2, threads_per_worker=6, processes=2)
        assert kw["cores"] == 12 and kw["processes"] == 2
    # the site example shipped in deploy/ is valid YAML with the same keys
    import yaml

    example = yaml.safe_load((REPO / "deploy" / "site-example.yaml").read_text())
    keys = set(example["survey-infer"]["slurm"])
    assert keys <= set(si_slurm.OPTION_KEYS.values()), keys - set(si_slurm.OPTION_KEYS.values())


def test_bad_options_are_clear_errors(jobqueue):
    with pytest.raises(si_slurm.SlurmError, match="at least 1"):
        si_slurm.cluster_kwargs(0)
    with pytest.raises(si_slurm.SlurmError, match="processes"):
        si_slurm.cluster_kwargs(1, cores=1, processes=2)


def test_missing_dask_jobqueue_is_a_clear_error(tmp_path):
    # a real interpreter in which `import dask_jobqueue` fails (sys.modules entry None == not importable)
    code = (
        "import sys; sys.modules['dask_jobqueue'] = None\n"
        "from survey_infer.pipeline.clusters.slurm import make_slurm_cluster, SlurmError\n"
        "from survey_infer.cli import UserError\n"
        "try:\n    make_slurm_cluster(2)\n"
        "except SlurmError as e:\n    assert isinstance(e, UserError); print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pip install 'survey-infer[slurm]'" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_deploy_scripts_are_valid_bash():
    for script in ["deploy/local-slurm/start.sh", "deploy/local-slurm/stop.sh", "deploy/survey-infer-run.sbatch"]:
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"
    sbatch = (REPO / "deploy" / "survey-infer-run.sbatch").read_text()
    for directive in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@"):
        assert directive in sbatch


# ------------------------------------------------------------------------------------------------ real Slurm
@pytest.mark.slurm
def test_two_worker_jobs_compute_a_sum(slurm_env, tmp_path):
    import dask.array as da
    from distributed import Client

    t0 = time.monotonic()
    cluster = si_slurm.make_slurm_cluster(2, memory="1GiB", walltime="00:10:00", log_directory=str(tmp_path))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=180)
            joined = time.monotonic() - t0
            print(f"2 Slurm worker jobs joined {joined:.1f} s after make_slurm_cluster")
            job_ids = sorted(job.job_id for job in cluster.workers.values())
            assert len(job_ids) == 2
            # the workers really are the Slurm jobs
            assert all(_job_state(j) == "RUNNING" for j in job_ids), [(j, _job_state(j)) for j in job_ids]
            x = da.arange(2_000_000, chunks=100_000, dtype="i8")
            assert int(x.sum().compute()) == 2_000_000 * 1_999_999 // 2
            hosts = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            assert sorted(hosts.values()) == job_ids
    finally:
        cluster.close()
    job_ids = locals().get("job_ids", [])
    _wait(lambda: all(_job_state(j) in ("", "CANCELLED", "COMPLETED") for j in job_ids), 60, "jobs to end")


@pytest.mark.slurm
def test_lost_worker_job_is_replaced(slurm_env, tmp_path):
    from distributed import Client

    cluster = si_slurm.make_slurm_cluster(2, memory="1GiB", walltime="00:10:00", log_directory=str(tmp_path))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=180)
            victim = next(iter(cluster.workers.values())).job_id
            _sh("scancel", victim)
            _wait(lambda: len(client.scheduler_info()["workers"]) < 2, 60, "the cancelled worker to leave")
            t0 = time.monotonic()
            _wait(lambda: len(client.scheduler_info()["workers"]) == 2, 120, "a replacement worker job")
            print(f"replacement worker joined {time.monotonic() - t0:.1f} s after the cancelled one left")
            new_ids = {job.job_id for job in cluster.workers.values()}
            assert victim not in new_ids
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
    finally:
        cluster.close()


@pytest.mark.slurm
def test_rejected_job_script_is_a_clear_error(slurm_env, tmp_path):
    with pytest.raises(si_slurm.SlurmError, match="rejected the worker job script"):
        si_slurm.make_slurm_cluster(1, memory="1GiB", partition="no-such-partition",
                                    log_directory=str(tmp_path))


@pytest.mark.slurm
def test_tls_between_scheduler_and_worker_jobs(slurm_env, tmp_path):
    from distributed import Client

    cluster = si_slurm.make_slurm_cluster(1, memory="1GiB", walltime="00:10:00", tls="temporary",
                                          shared_temp_directory=str(tmp_path), log_directory=str(tmp_path))
    try:
        assert cluster.scheduler_address.startswith("tls://")
        with Client(cluster) as client:  # picks up cluster.security
            client.wait_for_workers(1, timeout=180)
            assert all(addr.startswith("tls://") for addr in client.scheduler_info()["workers"])
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    finally:
        cluster.close()


# ------------------------------------------------------------------------------------------------ the pipeline on Slurm
N_OBJECTS = 600
BLOCK = 25          # 24 blocks: small enough to interrupt a run in the middle
T_MC = 10


def _pipeline_available() -> bool:
    try:
        from survey_infer.pipeline.runner import run_catalog  # noqa: F401
    except ImportError:
        return False
    return True


needs_pipeline = pytest.mark.skipif(not _pipeline_available(), reason="survey_infer.pipeline not available yet")


def _cli(*args: str, env: dict | None = None, timeout: float = 900, cwd=None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "survey_infer.cli", *args], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=cwd)
    return res


def _run_args(store: Path, catalog: Path, model: Path) -> list[str]:
    return ["run", "--input", str(store), "--output", str(catalog), "--model", str(model),
            "--mc-samples", str(T_MC), "--seed", "3", "--block-objects", str(BLOCK), "--no-progress",
            "--lease-seconds", "10"]


def _open(path: Path):
    from survey_infer.catalog.store import open_catalog

    return open_catalog(path)


def assert_identical_catalogs(a_path: Path, b_path: Path) -> None:
    """Every data variable and coordinate equal bit for bit (attrs such as times excluded)."""
    a, b = _open(a_path), _open(b_path)
    assert sorted(a.data_vars) == sorted(b.data_vars)
    assert sorted(a.coords) == sorted(b.coords)
    for name in [*a.data_vars, *a.coords]:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
        if x.dtype.kind in "biufc" and x.dtype.kind != "O":
            same = np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))
        else:
            same = np.array_equal(x, y)
        assert same, f"{name} differs between {a_path} and {b_path}"


def _markers(catalog: Path) -> int:
    """Blocks with a done-marker so far (progress of a running job)."""
    return len(list((catalog / "_markers").glob("**/block-*.json")))


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory, tiny_model):
    """A 600-object simulated store, the tiny test model (tests/conftest.py) and the catalog of a run on the
    local cluster (the reference every Slurm run must match bit for bit)."""
    if not _pipeline_available():
        pytest.skip("survey_infer.pipeline not available yet")
    d = tmp_path_factory.mktemp("slurm-pipeline")
    store, model, ref = d / "survey.zarr", Path(tiny_model), d / "reference.zarr"
    res = _cli("simulate", "--n", str(N_OBJECTS), "--seed", "1", "--out", str(store), "--no-progress")
    assert res.returncode == 0, res.stderr
    res = _cli(*_run_args(store, ref, model), "--cluster", "local", "--workers", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    return {"dir": d, "store": store, "model": model, "reference": ref}


def _slurm_env(job_name: str, log_dir: Path) -> dict:
    env = dict(os.environ)
    # site configuration through the dask config, as a site would do it (here by environment variables)
    env["DASK_SURVEY_INFER__SLURM__JOB_NAME"] = job_name
    env["DASK_SURVEY_INFER__SLURM__MEMORY"] = "1500MiB"
    env["DASK_SURVEY_INFER__SLURM__WALLTIME"] = "00:20:00"
    env["DASK_SURVEY_INFER__SLURM__LOG_DIRECTORY"] = str(log_dir)
    return env


def _jobs_named(name: str) -> list[str]:
    out = _sh("squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%i", check=False)
    return sorted(out.split())


@pytest.mark.slurm
@needs_pipeline
def test_pipeline_on_slurm_matches_local(slurm_env, tiny_inputs, tmp_path):
    cat = tmp_path / "slurm.zarr"
    t0 = time.monotonic()
    res = _cli(*_run_args(tiny_inputs["store"], cat, tiny_inputs["model"]), "--cluster", "slurm",
               "--slurm-jobs", "2", env=_slurm_env("si-test-match", tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    print(f"--cluster slurm (2 jobs), {N_OBJECTS} objects: {time.monotonic() - t0:.1f} s")
    assert_identical_catalogs(tiny_inputs["reference"], cat)
    assert not _jobs_named("si-test-match"), "worker jobs left running after the run"


@pytest.mark.slurm
@needs_pipeline
def test_pipeline_survives_a_cancelled_worker_job(slurm_env, tiny_inputs, tmp_path):
    cat = tmp_path / "slurm-scancel.zarr"
    name = "si-test-scancel"
    proc = subprocess.Popen([sys.executable, "-m", "survey_infer.cli",
                             *_run_args(tiny_inputs["store"], cat, tiny_inputs["model"]),
                             "--cluster", "slurm", "--slurm-jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_slurm_env(name, tmp_path))
    try:
        _wait(lambda: len(_jobs_named(name)) == 2 and _markers(cat) >= 2, 300, "2 running jobs and 2 done blocks")
        done_before = _markers(cat)
        victim = _jobs_named(name)[0]
        _sh("scancel", victim)
        print(f"scancel {victim} after {done_before} of {N_OBJECTS // BLOCK} blocks")
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    assert done_before < N_OBJECTS // BLOCK, "the run finished before the job was cancelled: test inconclusive"
    assert _job_state(victim) in ("CANCELLED", ""), _job_state(victim)
    assert_identical_catalogs(tiny_inputs["reference"], cat)
    assert not _jobs_named(name), "worker jobs left running after the run"


@pytest.mark.slurm
@needs_pipeline
def test_one_allocation_job_requeued_twice_resumes_identically(slurm_env, tiny_inputs, tmp_path):
    """sbatch deploy/survey-infer-run.sbatch; USR1 (the pre-walltime warning) -> it requeues itself; then an
    external `scontrol requeue` (preemption); the job resumes each time and ends with the identical catalog."""
    cat = tmp_path / "one-allocation.zarr"
    log = tmp_path / "job.out"
    env = dict(os.environ, SURVEY_INFER_PYTHON=sys.executable, SURVEY_INFER_WORKDIR=str(tmp_path / "work"),
               SURVEY_INFER_STOP_GRACE="30")
    job = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=1500M", "--time=00:30:00",
         f"--output={log}", "--job-name=si-test-requeue", str(REPO / "deploy" / "survey-infer-run.sbatch"),
         *_run_args(tiny_inputs["store"], cat, tiny_inputs["model"])[1:]],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    n_blocks = N_OBJECTS // BLOCK

    def restart_soon(expected_restarts: int) -> int:
        _wait(lambda: _job_state(job_id) == "PENDING" and _job_field(job_id, "Restarts") == str(expected_restarts),
              120, f"job {job_id} requeued (restart {expected_restarts})")
        # Slurm holds a requeued job for ~2 minutes (and starting it at the very second of the requeue fails
        # with a revoked credential): wait a little, then let it start now
        time.sleep(5)
        _sh("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        _wait(lambda: _job_state(job_id) == "RUNNING", 120, f"job {job_id} running again")
        return _markers(cat)  # blocks done when the restarted job begins

    try:
        _wait(lambda: _job_state(job_id) == "RUNNING", 120, "the job to start")
        _wait(lambda: _markers(cat) >= 2, 300, "2 done blocks")
        first = _markers(cat)
        t0 = time.monotonic()
        _sh("scancel", "--batch", "--signal=USR1", job_id)  # what Slurm sends 120 s before the walltime
        at_restart = restart_soon(1)
        print(f"USR1 after {first}/{n_blocks} blocks: requeued and running again "
              f"{time.monotonic() - t0:.1f} s later (requeue delay skipped); {at_restart} blocks done then")
        # the restarted job must itself compute blocks before it is interrupted again
        _wait(lambda: _markers(cat) >= at_restart + 2, 300, "2 blocks done by the restarted job")
        second = _markers(cat)
        _sh("scontrol", "requeue", job_id)  # preemption / node failure: Slurm kills and requeues
        restart_soon(2)
        print(f"scontrol requeue after {second}/{n_blocks} blocks")
        _wait(lambda: _job_state(job_id) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600,
              f"job {job_id} to finish")
    finally:
        if _job_state(job_id) in ("RUNNING", "PENDING"):
            _sh("scancel", job_id, check=False)
    text = log.read_text()
    assert _job_state(job_id) == "COMPLETED", text[-4000:]
    assert first < n_blocks and second < n_blocks, "the run finished before it was interrupted: inconclusive"
    assert "requeueing job" in text and "restart 2" in text, text[-4000:]
    assert at_restart < second < n_blocks
    assert_identical_catalogs(tiny_inputs["reference"], cat)
