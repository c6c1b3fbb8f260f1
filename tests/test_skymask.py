"""Sky model and sky masks: shipped model, instrument mask fraction, data-driven mask, hashing."""
from __future__ import annotations

import numpy as np
import pytest

from survey_infer.instrument import load_instrument
from survey_infer.skymask import data_driven_sky_mask, instrument_sky_mask, mask_hash, sky_mask_from_emission
from survey_infer.skymodel import SkyModelError, load_sky_model


def test_sky_model_shapes_and_ranges():
    inst = load_instrument()
    sky = load_sky_model(inst)
    W = inst.n_wave
    assert W == 12217
    for arr in (sky.emission, sky.transmission, sky.throughput, sky.read_noise_e, sky.dark_e_per_s):
        assert arr.shape == (W,)
        assert np.isfinite(arr).all()
    assert (sky.emission > 0).all()
    assert 0 <= sky.transmission.min() and sky.transmission.max() <= 1.0 + 1e-6
    assert 0.05 < np.median(sky.throughput) < 0.5
    # higher airmass: brighter sky, more absorption
    sky2 = load_sky_model(inst, airmass=2.0)
    assert sky2.emission.sum() > sky.emission.sum()
    assert sky2.transmission.mean() < sky.transmission.mean()
    mid = load_sky_model(inst, airmass=1.1)
    assert np.all(mid.emission >= np.minimum(sky.emission, load_sky_model(inst, 1.2).emission) - 1e-6)


def test_no_sky_model_is_a_clear_error():
    with pytest.raises(SkyModelError, match="no sky model"):
        load_sky_model("sdss_like")
    with pytest.raises(SkyModelError, match="airmass"):
        load_sky_model(None, airmass=3.0)


def test_instrument_mask_fraction_and_hash():
    m = instrument_sky_mask()
    assert m.dtype == np.uint8 and m.shape == (12217,)
    assert 0.12 <= m.mean() <= 0.18, m.mean()
    # cached and stable
    m2 = instrument_sky_mask("moons_lr")
    assert mask_hash(m) == mask_hash(m2)
    assert len(mask_hash(m)) == 16
    # returned arrays are independent copies
    m2[:] = 0
    assert instrument_sky_mask().mean() == m.mean()
    # a higher threshold masks fewer channels
    assert instrument_sky_mask(threshold=10.0).sum() < m.sum()
    # the strongest OH lines are masked (e.g. the 1.5-1.6 µm OH band in H)
    inst = load_instrument()
    sky = load_sky_model(inst)
    assert m[np.argmax(sky.emission)] == 1
    assert np.array_equal(sky_mask_from_emission(sky.emission, inst), m)


def test_data_driven_mask_numpy_and_dask_agree_with_sky():
    import dask.array as da

    inst = load_instrument()
    sky = load_sky_model(inst)
    rng = np.random.default_rng(0)
    var = sky.emission[None, :] * rng.uniform(0.5, 2.0, size=(64, 1))  # sky-dominated noise
    ivar = (1.0 / var).astype(np.float32)
    ivar[3, :100] = 0.0
    m_np = data_driven_sky_mask(ivar, inst.arm_index, threshold=5.0)
    m_da = data_driven_sky_mask(da.from_array(ivar, chunks=(16, -1)), inst.arm_index, threshold=5.0)
    ref = instrument_sky_mask()
    assert m_np.dtype == np.uint8
    agree = (m_np == ref).mean()
    assert agree > 0.99, agree
    assert (m_da == ref).mean() > 0.99
