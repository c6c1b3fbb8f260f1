"""The zwarn bitmask at Redrock's positions, set_flags bit by bit, z_err, and old catalogs refused."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from conftest import cli
from survey_infer import flags
from survey_infer.flags import BAD_MASK, USER_MASK, ZWarn, bit_table, describe, layout_mismatch
from survey_infer.catalog.store import open_catalog
from survey_infer.pipeline.runner import RunError, run_catalog
from survey_infer.screening import DEFAULT_THRESHOLDS, pdf_statistics, set_flags

# redrock/zwarning.py (desihub/redrock), class ZWarningMask: the ZWARN bits of DESI redshift catalogs
REDROCK = {"SKY": 2**0, "LITTLE_COVERAGE": 2**1, "SMALL_DELTA_CHI2": 2**2, "NEGATIVE_MODEL": 2**3,
           "MANY_OUTLIERS": 2**4, "Z_FITLIMIT": 2**5, "NEGATIVE_EMISSION": 2**6, "UNPLUGGED": 2**7,
           "BAD_TARGET": 2**8, "NODATA": 2**9, "BAD_MINFIT": 2**10, "POORDATA": 2**11}
REDROCK_RESERVED = sum(2**b for b in range(16, 24))  # RESERVED16..23: never set by Redrock


def test_bits_at_redrock_positions():
    for name, value in REDROCK.items():
        assert getattr(ZWarn, name) == value, name
    by_bit = {b.bit: b for b in flags.ZWARN_BITS}
    assert all(by_bit[v.bit_length() - 1].name == n for n, v in REDROCK.items())
    # a DESI user's ZWARN & 2**9 is NODATA here too
    assert describe(2**9) == ["NODATA"] and describe(2**1 | 2**5) == ["LITTLE_COVERAGE", "Z_FITLIMIT"]
    # survey-infer's own bits above Redrock's and off the user bits; user bits = Redrock's reserved ones
    own = [b for b in flags.ZWARN_BITS if b.name not in REDROCK]
    assert own and all(24 <= b.bit <= 30 for b in own)
    assert USER_MASK == REDROCK_RESERVED
    every = sum(b.value for b in flags.ZWARN_BITS)
    assert every & USER_MASK == 0 and every & sum(2**b for b in range(12, 16)) == 0 and every < 2**31
    # only bits survey-infer sets are in the masks; BAD_INPUT is another name of POORDATA (lookups by name)
    assert BAD_MASK & (REDROCK["SKY"] | REDROCK["SMALL_DELTA_CHI2"] | REDROCK["BAD_MINFIT"]) == 0
    assert ZWarn.BAD_INPUT == ZWarn.POORDATA and BAD_MASK & ZWarn.POORDATA
    names = {r["name"]: r["value"] for r in bit_table()}
    assert names["BAD_INPUT"] == names["POORDATA"] == 2**11 and names["NODATA"] == 2**9


def _stats(n: int) -> dict:
    return {"z": np.full(n, 1.5), "z_lo68": np.full(n, 1.49), "z_hi68": np.full(n, 1.51),
            "pz_conf": np.full(n, 0.95), "pz_npeaks": np.ones(n, np.int16)}


def test_set_flags_sets_each_bit_from_its_condition():
    """One object per condition, each sets exactly its bit (plus SCREENED where quality drops)."""
    n = 11
    st = _stats(n)
    kw = {"p_outside": np.zeros(n), "z_mc_std": np.zeros(n), "snr": np.full(n, 5.0),
          "usable_fraction": np.ones(n), "bad_input_fraction": np.zeros(n), "n_good": np.full(n, 100),
          "z_range": (0.9, 2.6)}
    kw["n_good"][1] = 0
    kw["snr"][1] = 0.0
    kw["bad_input_fraction"][2] = 0.2
    kw["usable_fraction"][3] = 0.1
    kw["snr"][4] = 0.1
    st["pz_npeaks"][5] = 2
    st["z_hi68"][6] = 1.6
    st["pz_conf"][7] = 0.1
    kw["z_mc_std"][8] = 0.05
    st["z"][9] = 2.595
    kw["p_outside"][10] = 0.9
    zw, q = set_flags(st, thresholds={"quality": 0.5}, **kw)
    assert zw.dtype == np.int32 and q.dtype == np.float32
    got = [describe(v) for v in zw]
    assert got[0] == []
    assert got[1] == ["NODATA"] and q[1] == 0  # snr 0 with no data is not LOW_SNR
    assert got[2] == ["POORDATA"]
    assert got[3] == ["LITTLE_COVERAGE"]
    assert got[4] == ["LOW_SNR"]
    assert got[5] == ["MULTI_PEAK"]
    assert got[6] == ["BROAD_PDF"]
    assert got[7] == ["LOW_CONFIDENCE", "SCREENED"]
    assert got[8] == ["MC_UNSTABLE"]
    assert got[9] == ["Z_FITLIMIT"]
    assert got[10] == ["OUT_OF_RANGE", "SCREENED"]
    rel = flags.z_reliable(zw)
    assert rel.tolist() == [True, False, False, False, True, True, True, False, True, True, False]
    # the model's thresholds are the ones applied
    zw2, _ = set_flags(st, thresholds={"quality": 0.5, "low_snr": 10.0, "bad_input": 0.5}, **kw)
    assert all(v & ZWarn.LOW_SNR for i, v in enumerate(zw2) if i != 1) and not zw2[2] & ZWarn.POORDATA


def test_descriptions_state_the_models_thresholds():
    t = {r["name"]: r["description"] for r in bit_table({"quality": 0.9653, "low_snr": 1.5, "z_edge": 0.02})}
    assert "0.9653" in t["SCREENED"] and "1.5" in t["LOW_SNR"] and "0.02" in t["Z_FITLIMIT"]
    assert f"{DEFAULT_THRESHOLDS['low_confidence']:g}" in t["LOW_CONFIDENCE"]
    assert "{" not in "".join(t.values())


def test_z_err_within_bin_term_and_about_the_mode():
    zc = 0.9 + 0.003 * (np.arange(567) + 0.5)
    dz = 0.003
    one = np.zeros((1, 567))
    one[0, 200] = 1.0
    st = pdf_statistics(one, zc, dz)
    assert st["z_err"][0] == pytest.approx(dz / np.sqrt(12), rel=1e-9)  # was 0
    # a wide Gaussian: z_err is its sigma (the within-bin term is negligible)
    g = np.exp(-0.5 * ((zc - 1.7) / 0.03) ** 2)[None, :]
    st = pdf_statistics(g / g.sum(), zc, dz)
    assert st["z_err"][0] == pytest.approx(np.sqrt(0.03**2 + dz**2 / 12), rel=2e-3)
    # two peaks: measured about the mode, so larger than the standard deviation about the mean
    two = 0.7 * np.exp(-0.5 * ((zc - 1.2) / 0.01) ** 2) + 0.3 * np.exp(-0.5 * ((zc - 2.0) / 0.01) ** 2)
    two = (two / two.sum())[None, :]
    st = pdf_statistics(two, zc, dz)
    z = st["z"][0]
    assert abs(z - 1.2) < 0.002
    want = np.sqrt((two[0] * (zc - z) ** 2).sum() + dz**2 / 12)
    sd = np.sqrt((two[0] * (zc - st["z_mean"][0]) ** 2).sum())
    assert st["z_err"][0] == pytest.approx(want, rel=1e-9) and st["z_err"][0] > sd


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, small_survey, tiny_model):
    out = tmp_path_factory.mktemp("flags") / "cat.zarr"
    s = run_catalog(small_survey, out, model=tiny_model, cluster="inprocess", mc_samples=4, seed=1,
                    block_objects=128, progress=False, print_fn=lambda *a: None)
    assert s.ok
    return out, s


def test_catalog_flag_attributes(catalog):
    path, summary = catalog
    cat = open_catalog(path)
    zw = cat["zwarn"]
    assert zw.dtype == np.int32
    masks, meanings = list(zw.attrs["flag_masks"]), zw.attrs["flag_meanings"].split()
    assert len(masks) == len(meanings) and dict(zip(meanings, masks))["NODATA"] == 2**9
    assert "SKY" not in meanings  # never set, so not a CF flag
    table = {r["name"]: r for r in cat.attrs["zwarn_bits"]}
    assert "0.3" in table["SCREENED"]["description"]  # the tiny model's calibrated threshold, not the default
    assert cat.attrs["zwarn_bad_mask"] == BAD_MASK
    assert set(summary.flag_counts) == {b.name for b in flags.ZWARN_BITS if b.used}
    assert summary.flag_counts == flags.flag_counts(zw.values)  # counts of bits 24-30 reach the summary
    assert sum(summary.flag_counts.values()) > 0


def test_old_layout_catalog_is_refused(catalog, small_survey, tiny_model, tmp_path):
    """A catalog made with the earlier bit layout (NODATA at bit 0, screening sc-2) is not resumed."""
    path, _ = catalog
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    g = zarr.open_group(str(old), mode="r+", zarr_format=3)
    old_table = [{"name": n, "bit": i, "value": 1 << i, "bad": True, "description": ""} for i, n in
                 enumerate(["NODATA", "BAD_INPUT", "LITTLE_COVERAGE", "LOW_SNR", "MULTI_PEAK", "BROAD_PDF",
                            "LOW_CONFIDENCE", "MC_UNSTABLE", "Z_EDGE", "OUT_OF_RANGE", "SCREENED"])]
    fp = dict(g.attrs["fingerprint"])
    fp["screening_version"] = "sc-2"
    g.attrs.update({"zwarn_bits": old_table, "fingerprint": fp})
    assert "zwarn bit 0 is NODATA in the catalog but SKY" in layout_mismatch(dict(g.attrs))
    for kw in ({}, {"reprocess": True}, {"where": "zwarn != 0"}):
        with pytest.raises(RunError, match="older survey-infer whose zwarn bits mean other things"):
            run_catalog(small_survey, old, model=tiny_model, cluster="inprocess", mc_samples=4, seed=1,
                        progress=False, print_fn=lambda *a: None, **kw)
    r = cli("run", "--input", small_survey, "--output", old, "--model", tiny_model, "--cluster", "inprocess",
            "--mc-samples", "4", "--seed", "1", "--no-progress")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "zwarn bit 0 is NODATA" in r.stderr and "write a new catalog" in r.stderr
    assert layout_mismatch(open_catalog(path).attrs) is None


def test_store_error_names_variables_not_a_python_list(tmp_path, small_survey, tiny_model):
    """A store without ivar: one line naming the variable, not "['ivar']"."""
    bad = tmp_path / "noivar.zarr"
    shutil.copytree(small_survey, bad)
    shutil.rmtree(bad / "ivar")
    with pytest.raises(RunError) as exc:
        run_catalog(bad, tmp_path / "c.zarr", model=tiny_model, cluster="inprocess", progress=False,
                    print_fn=lambda *a: None)
    assert "lacks required variable(s) ivar" in str(exc.value) and "[" not in str(exc.value)
