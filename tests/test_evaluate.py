"""evaluate: metrics by galaxy type, Hα EW bin, template family, with interval coverage per group (issue 12)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from survey_infer.evaluate import _group_masks, _group_plot, _zblock, format_report


def _cat(n=400, seed=0):
    rng = np.random.default_rng(seed)
    zt = rng.uniform(0.9, 2.6, n)
    passive = np.arange(n) % 4 == 0
    z = np.where(passive & (np.arange(n) % 8 == 0), zt + 0.3, zt + rng.normal(0, 0.002, n))  # half the passive wrong
    ew = np.where(passive, 2.0, rng.uniform(5, 300, n))
    fam = (np.arange(n) % 3).astype(np.uint8)
    ds = xr.Dataset({"z": ("object", z), "z_true": ("object", zt), "is_passive": ("object", passive),
                     "ew_halpha_rest_true": ("object", ew), "template_family": ("object", fam)})
    ds["template_family"].attrs.update(flag_values=[0, 1, 2], flag_meanings="kcorrect m11_marcs bpass")
    return ds


def test_groups_by_type_ew_and_family():
    ds = _cat()
    g = _group_masks(ds, ds.sizes["object"])
    assert set(g) == {"by_type", "by_ew_halpha", "by_family"}
    assert set(g["by_family"]) == {"kcorrect", "m11_marcs", "bpass"}
    assert g["by_type"]["passive"].sum() == 100 and set(g["by_ew_halpha"]) == {"<5", "5-20", "20-100", ">100"}
    z, zt = ds["z"].values, ds["z_true"].values
    rel = np.ones(len(z), bool)
    iv = {"z_lo68": z - 0.01, "z_hi68": z + 0.01, "z_lo95": z - 0.02, "z_hi95": z + 0.02}
    p = _zblock(z, zt, rel, g["by_type"]["passive"], iv)
    s = _zblock(z, zt, rel, g["by_type"]["star-forming"], iv)
    assert p["n"] == 100 and abs(p["acc_all"] - 0.5) < 1e-9 and abs(p["coverage68"] - 0.5) < 1e-9
    assert s["acc_all"] == 1.0 and s["coverage95"] == 1.0
    assert _zblock(z, zt, rel, g["by_ew_halpha"]["<5"], iv)["n"] == 100


def test_report_and_figure_show_groups(tmp_path):
    blk = {"n": 100, "acc_all": 0.5, "acc_reliable": 0.9, "set_aside": 0.4, "coverage68": 0.6, "coverage95": 0.9}
    m = {"catalog": "c", "n_objects": 200, "n_galaxies_in_range": 200, "n_interlopers": 0, "n_nodata": 0,
         "redshift": blk, "by_type": {"passive": blk, "star-forming": blk}, "by_family": {"bpass": blk},
         "by_exposure_h": {"2": blk}, "by_mag_h": {"21-22": blk}, "nmad_dz_1pz": 0.001, "outlier_frac_0.05": 0.1,
         "coverage68": 0.6, "coverage95": 0.9, "interlopers_not_reliable": float("nan"), "interlopers_by_kind": {}}
    txt = format_report(m)
    assert "passive" in txt and "star-forming" in txt and "bpass" in txt and "cov68" in txt
    _group_plot(tmp_path, m)
    assert (tmp_path / "evaluate_groups.png").stat().st_size > 1000
