"""The shipped default model end to end, the way ``survey-infer demo`` runs it (small N), and ``evaluate``."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import cli
from survey_infer.demo import run_demo
from survey_infer.evaluate import evaluate_catalog, format_report
from survey_infer.flags import BAD_MASK
from survey_infer.catalog.store import open_catalog

N = 160


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``run_demo`` with the shipped model on a real local cluster (1 worker), T = 8; its stdout."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "d"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_demo(out, n=N, seed=11, workers=1, mc_samples=8, progress=False)
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


def test_demo_with_the_shipped_model(demo):
    out, text = demo
    cat = open_catalog(out / "catalog.zarr")
    assert cat.sizes["object"] == N and (out / "demo.png").stat().st_size > 10_000
    assert cat.attrs["model_dir"].endswith("default") and cat.attrs["mc_samples"] == 8
    assert cat.attrs["fingerprint"]["screening_version"] == "sc-3"
    # the shipped model's calibrated threshold is stated in the catalog's bit table
    from survey_infer.model.checkpoint import load_model

    q = load_model("default").calibration["thresholds"]["quality"]
    screened = next(r for r in cat.attrs["zwarn_bits"] if r["name"] == "SCREENED")
    assert f"{q:.4g}" in screened["description"]
    z, zt, kind = cat["z"].values, cat["z_true"].values, cat["kind"].values
    zw = cat["zwarn"].values
    assert zw.dtype == np.int32 and np.array_equal(cat["z_reliable"].values, (zw & BAD_MASK) == 0)
    gal = kind == 0
    ok = np.abs(z - zt) < 0.01
    # a trained model, not noise (an untrained one gets ~1%: 7 of 567 bins); the reliable ones right more often
    assert ok[gal].mean() > 0.25, ok[gal].mean()
    rel = cat["z_reliable"].values & gal
    assert rel.sum() >= 0.3 * gal.sum() and ok[rel].mean() >= ok[gal].mean()
    err = cat["z_err"].values[gal]
    assert (err >= 0.003 / np.sqrt(12) - 1e-7).all()  # the within-bin spread: never below dz / sqrt(12)
    # what the demo printed: summary, accuracy, the folder's sizes
    assert "reliable" in text and "|dz|<0.01" in text and "survey.zarr" in text and " kB" in text


def test_demo_rerun_resumes(demo, capsys):
    out, _ = demo
    assert run_demo(out, n=N, seed=11, workers=1, mc_samples=8, progress=False) == 0
    text = capsys.readouterr().out
    assert "using the simulated survey already in" in text and "1 block(s) already done, 0 to compute" in text


def test_evaluate_metrics_and_plots(demo, tmp_path):
    out, _ = demo
    m = evaluate_catalog(open_catalog(out / "catalog.zarr"), plots=tmp_path / "plots")
    cat = open_catalog(out / "catalog.zarr")
    gal = cat["kind"].values == 0
    ok = np.abs(cat["z"].values - cat["z_true"].values) < 0.01
    assert m["n_objects"] == N and m["n_galaxies_in_range"] == int(gal.sum())
    assert m["redshift"]["acc_all"] == pytest.approx(ok[gal].mean())
    rel = cat["z_reliable"].values
    assert m["redshift"]["acc_reliable"] == pytest.approx(ok[gal & rel].mean())
    assert m["redshift"]["set_aside"] == pytest.approx(1 - (gal & rel).sum() / gal.sum())
    for p in ("logmstar", "logsfr"):
        d = (cat[p].values - cat[f"{p}_true"].values)[gal]
        d = d[np.isfinite(d)]
        assert m[p]["n"] == d.size > 0 and m[p]["bias"] == pytest.approx(np.median(d), abs=1e-6)
        assert m[p]["nmad"] == pytest.approx(1.4826 * np.median(np.abs(d - np.median(d))), rel=1e-5)
    names = sorted(p.split("/")[-1] for p in m["plots_written"])
    assert "evaluate.png" in names and "evaluate_mstar_sfr.png" in names
    assert all((tmp_path / "plots" / n).stat().st_size > 10_000 for n in names)
    assert "NMAD" in format_report(m)


def test_evaluate_cli_says_what_it_wrote(demo, tmp_path):
    out, _ = demo
    r = cli("evaluate", out / "catalog.zarr", "--plots", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("plots written:")]
    assert line and "evaluate_mstar_sfr.png" in line[0] and str(tmp_path / "p") in line[0]


def test_progress_bar_shows_one_rate(small_survey, tiny_model, tmp_path, capfd):
    from survey_infer.pipeline.runner import run_catalog

    s = run_catalog(small_survey, tmp_path / "c.zarr", model=tiny_model, cluster="inprocess", mc_samples=2,
                    block_objects=64, progress=True, print_fn=lambda *a: None)
    assert s.ok
    frames = [f for f in capfd.readouterr().err.replace("\n", "\r").split("\r") if "spec" in f]
    assert frames and all(f.count("spec/s") <= 1 for f in frames), frames[-1]
    assert "300/300" in frames[-1]
