"""On-the-fly training (issue 12): fresh simulated spectra every step, legs that resume exactly, export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_ARCH, make_tiny_model
from survey_infer.train import STATE_DIR, _sim_batch, export_online, train_online

ARCH = {**TINY_ARCH, "xc_templates": 2}
KW = dict(steps=4, batch_size=6, lr=1e-3, seed=3, sim_seed=11, arch=ARCH, threads=1, val_n=12, val_every=2)


def test_online_batches_are_fresh_and_deterministic():
    a, b = _sim_batch(0, 4, 11, None), _sim_batch(1, 4, 11, None)
    assert np.array_equal(a["flux"], _sim_batch(0, 4, 11, None)["flux"])  # same step, same spectra
    assert not np.array_equal(a["flux"], b["flux"])  # the next step sees new spectra
    assert list(b["object_id"]) == [4, 5, 6, 7]


def test_online_training_resumes_exactly_and_exports(tmp_path):
    straight = train_online(tmp_path / "a", **KW)
    assert straight["finished"] and straight["step"] == 4 and straight["samples_per_s"] > 0
    leg1 = train_online(tmp_path / "b", max_steps=1, **KW)
    assert not leg1["finished"] and leg1["step"] == 1
    leg2 = train_online(tmp_path / "b", resume=True, **{**KW, "arch": None})  # the saved run knows its architecture
    assert leg2["finished"] and leg2["step"] == 4
    ta = load_file(str(tmp_path / "a" / STATE_DIR / "state.safetensors"))
    tb = load_file(str(tmp_path / "b" / STATE_DIR / "state.safetensors"))
    assert ta.keys() == tb.keys() and any(k.startswith("opt.") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    hist = json.loads((tmp_path / "b" / STATE_DIR / "state.json").read_text())["history"]
    assert [h["step"] for h in hist] == [0, 2, 4] and all(0 <= h["acc_passive"] <= 1 for h in hist)
    from survey_infer.model.checkpoint import load_model

    export_online(tmp_path / "b", tmp_path / "model")
    m = load_model(tmp_path / "model")
    assert m.cfg.xc_templates == 2 and m.meta["training"]["samples_seen"] == 24
    assert m.net.xc.t_full.abs().sum() > 0  # the template bank travels with the weights


def test_online_warm_start_from_a_model(tmp_path):
    d = make_tiny_model(tmp_path / "old")
    res = train_online(tmp_path / "w", init_from=d, freeze_trunk=True, **{**KW, "steps": 2})
    assert res["finished"]
    from survey_infer.model.checkpoint import load_model

    export_online(tmp_path / "w", tmp_path / "wm")
    old, new = load_model(d).net.state_dict(), load_model(tmp_path / "wm").net.state_dict()
    assert torch.equal(old["stem.weight"], new["stem.weight"])  # trunk frozen, BatchNorm statistics too
    assert torch.equal(old["units.0.bn.running_mean"], new["units.0.bn.running_mean"])
    assert not torch.equal(old["h2.weight"], new["h2.weight"])  # the head trained
    with pytest.raises(ValueError, match="warm start"):
        train_online(tmp_path / "w2", init_from=d, **{**KW, "steps": 1, "arch": {**ARCH, "width": 10}})


def test_committed_training_state_exports_a_loadable_model(tmp_path):
    """The resumable state shipped in survey_infer/data/models/train_state matches the code's architecture."""
    from importlib import resources

    from survey_infer.model.checkpoint import load_model

    src = resources.files("survey_infer") / "data" / "models" / "train_state"
    run = tmp_path / "run" / STATE_DIR
    run.mkdir(parents=True)
    for f in ("state.json", "state.safetensors"):
        (run / f).write_bytes((src / f).read_bytes())
    export_online(tmp_path / "run", tmp_path / "model")
    m = load_model(tmp_path / "model")
    meta = json.loads((run / "state.json").read_text())
    assert m.cfg.xc_templates == meta["architecture"]["xc_templates"] > 0 and meta["step"] > 0
    assert meta["history"][-1]["acc_all"] > meta["history"][0]["acc_all"]  # the curve it recorded went up


def test_train_cli_online_legs_and_finalize(tmp_path):
    from conftest import cli

    out = tmp_path / "run"
    args = ["train", "--online-steps", 2, "--out", out, "--batch-size", 4, "--arch", json.dumps(ARCH),
            "--online-val-n", 8, "--val-every", 1, "--threads", 1, "--sim-seed", 5]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["finished"] and (out / "model.json").exists()  # exported when finished
    r2 = cli(*args, "--resume", "--finalize")
    assert r2.returncode == 0, r2.stderr
    r3 = cli("train", "--out", tmp_path / "x")
    assert r3.returncode == 2 and "--online-steps" in r3.stderr
