"""Model checkpoints: ``model.safetensors`` (weights, sky mask) + ``model.json`` (everything else).

Nothing is ever unpickled. The JSON holds the architecture, the redshift grid, the instrument description,
the sky mask hash, the preprocessing version, the screening calibration (temperature, thresholds) and the
training provenance. :func:`model_sha256` identifies the numerics of a model: it hashes the weights file and the
parts of the JSON that change outputs (not the provenance), and is what catalogs record.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..instrument import Instrument, load_instrument
from .network import NetConfig, SpectrumNet
from .zgrid import ZGrid

FORMAT = "survey-infer-model/1"
WEIGHTS = "model.safetensors"
META = "model.json"
NUMERIC_KEYS = ("format", "architecture", "z_grid", "grid_hash", "sky_mask_hash", "preprocessing_version",
                "calibration")


@dataclass
class Model:
    """A loaded model: network (eval mode), its metadata and the sky mask it was trained with."""

    net: SpectrumNet
    meta: dict
    sky_mask: np.ndarray
    instrument: Instrument
    zgrid: ZGrid
    path: Path | None = None
    sha256: str = ""
    calibration: dict = field(default_factory=dict)

    @property
    def cfg(self) -> NetConfig:
        return self.net.cfg


from ..provenance import file_sha256 as _sha_file
from ..errors import CheckpointError  # noqa: F401  (defined in survey_infer.errors)


def model_sha256(model_dir: str | Path) -> str:
    """Identity of a model's numerics: sha256 of the weights file and the numeric parts of the JSON."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META).read_text())
    h = hashlib.sha256()
    h.update(_sha_file(model_dir / WEIGHTS).encode())
    h.update(json.dumps({k: meta.get(k) for k in NUMERIC_KEYS}, sort_keys=True).encode())
    return h.hexdigest()


def default_model_dir() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("survey_infer") / "data" / "models" / "default"))


def resolve_model_dir(model: str | Path | None) -> Path:
    if model in (None, "default"):
        d = default_model_dir()
        if not (d / META).exists():
            raise CheckpointError(f"the shipped default model is missing from {d} (reinstall survey-infer)")
        return d
    return Path(model)


def save_model(model_dir: str | Path, net: SpectrumNet, instrument: Instrument, sky_mask: np.ndarray,
               preprocessing_version: str, calibration: dict | None = None, training: dict | None = None) -> str:
    """Write ``model.safetensors`` + ``model.json`` atomically; returns :func:`model_sha256`."""
    from ..skymask import mask_hash

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors["__sky_mask__"] = torch.from_numpy(np.asarray(sky_mask, np.uint8).copy())
    tmp_w = model_dir / f".{WEIGHTS}.tmp"
    save_file(tensors, str(tmp_w), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "architecture": net.cfg.to_dict(),
        "z_grid": net.zgrid.to_dict(),
        "instrument": instrument.config,
        "grid_hash": instrument.grid_hash,
        "sky_mask_hash": mask_hash(sky_mask),
        "preprocessing_version": preprocessing_version,
        "calibration": calibration or {},
        "training": training or {},
    }
    os.replace(tmp_w, model_dir / WEIGHTS)
    meta["weights_sha256"] = _sha_file(model_dir / WEIGHTS)
    tmp_m = model_dir / f".{META}.tmp"
    tmp_m.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp_m, model_dir / META)
    return model_sha256(model_dir)


def update_meta(model_dir: str | Path, **updates) -> str:
    """Change JSON fields (e.g. calibration) atomically; returns the new :func:`model_sha256`."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META).read_text())
    meta.update(updates)
    tmp_m = model_dir / f".{META}.tmp"
    tmp_m.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp_m, model_dir / META)
    return model_sha256(model_dir)


def load_model(model: str | Path | None = "default", expected_sha256: str | None = None,
               device: str | torch.device = "cpu") -> Model:
    """Load a model directory (safetensors + JSON; never unpickles) and verify its hashes.

    Parameters
    ----------
    model : ``"default"``, path or None
        Model directory; ``"default"``/None = the shipped model.
    expected_sha256 : str, optional
        Refuse a model whose :func:`model_sha256` differs (workers check what the driver resolved).
    """
    d = resolve_model_dir(model)
    if not (d / META).is_file() or not (d / WEIGHTS).is_file():
        raise CheckpointError(f"{d} is not a model directory (needs {WEIGHTS} and {META})")
    meta = json.loads((d / META).read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{d}/{META}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    actual = _sha_file(d / WEIGHTS)
    if meta.get("weights_sha256") and meta["weights_sha256"] != actual:
        raise CheckpointError(f"{d}/{WEIGHTS}: sha256 {actual[:12]}… does not match model.json "
                              f"({meta['weights_sha256'][:12]}…): corrupt or replaced file")
    sha = model_sha256(d)
    if expected_sha256 and sha != expected_sha256:
        raise CheckpointError(f"model {d} has sha256 {sha[:12]}… but the run expects {expected_sha256[:12]}…")
    inst = load_instrument(meta["instrument"])
    zg = ZGrid(meta["z_grid"]["z_min"], meta["z_grid"]["z_max"], meta["z_grid"]["dz"])
    cfg = NetConfig.from_dict(meta["architecture"])
    net = SpectrumNet(cfg, inst, zg)
    tensors = load_file(str(d / WEIGHTS))
    sky = tensors.pop("__sky_mask__").numpy().astype(np.uint8)
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{d}: weights do not match the architecture (missing: "
                              f"{', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})")
    net.eval().to(device)
    return Model(net=net, meta=meta, sky_mask=sky, instrument=inst, zgrid=zg, path=d, sha256=sha,
                 calibration=dict(meta.get("calibration") or {}))
