"""The template bank of the χ² scan built from the simulator's SSP families (issue 12): weighted PCA and the
SSP + kcorrect spectra it is built from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_infer.instrument import load_instrument
from survey_infer.model.zgrid import ZGrid

INST = load_instrument()


def test_ssp_template_spectra_every_family_weighs_the_same():
    from survey_infer.model.xcorr import LogGrid, ssp_template_spectra
    from survey_infer.simulate.families import SSP_FAMILIES, load_family

    spec, wave, wts = ssp_template_spectra()
    n_ssp = sum(load_family(f)["cube"].shape[0] for f in SSP_FAMILIES)
    assert spec.shape == (n_ssp + 5, len(wave)) and np.isfinite(spec).all() and (spec.sum(axis=1) > 0).all()
    assert np.isclose(wts.sum(), len(SSP_FAMILIES) + 1) and np.isclose(wts[-5:].sum(), 1.0)
    rw = LogGrid(INST, ZGrid(), 5e-4).rest_wave
    assert wave[0] <= rw[0] and wave[-1] >= rw[-1]  # the bank covers the scan's rest range
    young, _, _ = ssp_template_spectra(max_age_gyr=1.0, with_kcorrect=False)
    assert 0 < len(young) < n_ssp


def test_template_bank_weight_equals_repeating_the_spectrum():
    """Weight 2 on a spectrum gives the PCA basis of the set with that spectrum twice (up to sign)."""
    from survey_infer.model.xcorr import LogGrid, template_bank

    g = LogGrid(INST, ZGrid(), 5e-4)
    wave = np.linspace(1500.0, 10000.0, 3000)
    rng = np.random.default_rng(5)
    base = 1.0 + 0.3 * np.sin(wave[None, :] / rng.uniform(200, 900, (4, 1))) + rng.uniform(0, 1, (4, 1)) * wave / 1e4
    w = np.array([1.0, 2.0, 1.0, 1.0])
    full_w, hp_w = template_bank(base, wave, g, 3, weights=w)
    full_r, hp_r = template_bank(base[[0, 1, 1, 2, 3]], wave, g, 3)
    for a, b in ((full_w, full_r), (hp_w, hp_r)):
        assert np.allclose(np.abs(np.sum(a * b, axis=1)) / g.n_rest, 1.0, atol=1e-4)
    full_u, _ = template_bank(base, wave, g, 3)
    assert not np.allclose(np.abs(np.sum(full_u * full_r, axis=1)) / g.n_rest, 1.0, atol=1e-4)


def test_ssp_bank_fills_the_scan():
    from survey_infer.model.xcorr import TemplateChi2, ssp_template_spectra

    xc = TemplateChi2(INST, ZGrid(), 5, 5e-4)
    xc.fill(*ssp_template_spectra())
    assert torch.isfinite(xc.t_full).all() and torch.isfinite(xc.t_hp).all()
    gram = (xc.t_full @ xc.t_full.T).numpy() / xc.grid.n_rest
    assert np.allclose(gram, np.eye(5), atol=1e-4)  # orthonormal rows of unit rms
