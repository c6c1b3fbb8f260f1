"""``survey-infer calibrate``: its options and how they become a library call
(:func:`survey_infer.calibrate.calibrate_model`)."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand and its options to ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "calibrate", help="(re)calibrate a model's PDF temperature, screening threshold and error scales",
        description="Fit the PDF temperature (68%/95% interval coverage), the SCREENED threshold (accuracy "
                    "target among kept galaxies, at most MAX_SET_ASIDE set aside) and the log M*/log SFR error "
                    "scales on a validation store with truth columns; writes them into MODEL_DIR/model.json "
                    "(the model's sha256 changes).")
    p.add_argument("model_dir", help="model directory (model.json + model.safetensors)")
    p.add_argument("--val", required=True, help="validation survey store with truth columns")
    p.add_argument("--n", type=int, default=5000,
                   help="validation objects used (default 5000; held in memory, ~0.1 GB per 1,000)")
    p.add_argument("--mc-samples", type=int, default=50,
                   help="MC dropout samples T (default 50, as `run`: the PDF's shape and the quality depend on T)")
    p.add_argument("--target-accuracy", type=float, default=0.99,
                   help="fraction with |dz| < 0.01 among kept galaxies (default 0.99)")
    p.add_argument("--max-set-aside", type=float, default=0.12, help="largest fraction set aside (default 0.12)")
    p.add_argument("--margin-sigmas", type=float, default=2.0,
                   help="aim this many binomial standard errors above the targets (default 2)")
    p.add_argument("--interloper-target", type=float, default=0.97,
                   help="fraction of the validation interlopers (stars, galaxies outside the z grid) left not "
                        "z_reliable; the SCREENED threshold is raised to reach it (default 0.97; enforced with "
                        ">= 30 interlopers in the set)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Calibrate ``model_dir`` in place; one summary line on stderr, the full report as JSON on stdout.

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CalibrationError, SurveyStoreError, CheckpointError
        ``--val`` cannot be opened, or as :func:`survey_infer.calibrate.calibrate_model` (all
        :class:`~survey_infer.errors.UserError`).
    """
    from ..calibrate import calibrate_model
    from ..io.survey_store import open_survey

    report = calibrate_model(args.model_dir, open_survey(args.val), n=args.n, mc_samples=args.mc_samples,
                             target_accuracy=args.target_accuracy, max_set_aside=args.max_set_aside,
                             margin_sigmas=args.margin_sigmas, interloper_target=args.interloper_target)
    r = report
    print(f"calibrated {args.model_dir}: temperature {r['temperature']:.4g} x exp({r['temperature_entropy_slope']:g} "
          f"(H - 0.5)) (validation coverage 68% {r['coverage68']:.3f}, 95% {r['coverage95']:.3f}); SCREENED below "
          f"quality {r['quality_threshold']:.4f}: {r['val_accuracy_kept']:.4f} of kept galaxies within |dz| < 0.01, "
          f"{100 * r['val_set_aside']:.1f}% set aside (target {r['target_accuracy']}: "
          f"{'met' if r['target_met'] else 'NOT met'}); interlopers not reliable "
          f"{r.get('val_interlopers_not_reliable', float('nan')):.3f} (target {r['interloper_target']}); "
          f"new sha256 {r['model_sha256'][:16]}",
          file=sys.stderr)
    print(json.dumps(report, indent=1, default=str))
    return 0
