"""Training: ``survey-infer train --train STORE --val STORE --out MODEL_DIR [--resume]``.

Multi-task loss = cross-entropy over the redshift bins + "outside" class (Gaussian-smoothed labels)
+ heteroscedastic Gaussian NLL for log M★ and log SFR (galaxies in range) + BCE for the auxiliary
line-location map. Everything that drives the optimisation is a function of (seed, epoch, step): data order,
dropout masks (counter-based, :mod:`survey_infer.model.mc`), so a run checkpointed at any step resumes exactly.
A checkpoint (``MODEL_DIR/train_state/``: safetensors weights + optimizer tensors, JSON for the rest; nothing
pickled) is written every epoch and every ``--checkpoint-minutes``; ``--max-minutes`` ends a leg cleanly.
After the last epoch the PDFs are calibrated (temperature) and the screening thresholds set on the validation
set; both are stored in ``model.json``.
"""
from __future__ import annotations

from .common import STATE_DIR, quick_validate
from .online import TRUNK_MODULES, _sim_batch, export_online, train_online, warm_start
from .stores import train_model

__all__ = ["STATE_DIR", "TRUNK_MODULES", "train_model", "train_online", "export_online", "warm_start",
           "quick_validate", "_sim_batch"]
