"""``survey-infer train``: its options and how they become a library call (:func:`survey_infer.train.train_model`
on stores, :func:`survey_infer.train.train_online` on spectra simulated on the fly)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "run"]


def _description() -> str:
    """The docstring of :mod:`survey_infer.train`, read from its source: importing it would import torch (~2 s)
    every time any command builds its parser."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("survey_infer.train")
    try:
        return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    except (OSError, TypeError, AttributeError):  # no source (e.g. a zipped install): a short line
        return "Train a model on simulated surveys (or spectra simulated on the fly), then calibrate it."


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand and its options to ``subparsers``; return its parser."""
    p = subparsers.add_parser("train", help="train a model on simulated survey stores",
                              description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=None,
                   help="training survey store (with truth columns); omit with --online-steps")
    p.add_argument("--val", default=None, help="validation survey store (calibration, thresholds)")
    p.add_argument("--online-steps", type=int, default=None,
                   help="train on spectra simulated on the fly for this many steps (no --train store)")
    p.add_argument("--sim-seed", type=int, default=1_000_000, help="survey seed of the on-the-fly spectra")
    p.add_argument("--sim-config", default=None, help="JSON dict of SimConfig fields for the on-the-fly spectra")
    p.add_argument("--init-from", default=None, help="warm start from this model directory ('default' = shipped)")
    p.add_argument("--online-val-n", type=int, default=1024,
                   help="with --online-steps: spectra of the fixed validation sample of the learning curve")
    p.add_argument("--val-every", type=int, default=200, help="with --online-steps: steps between validations")
    p.add_argument("--freeze-trunk", action="store_true",
                   help="with --online-steps: train only the heads (the CNN trunk fixed; ~3x cheaper per step)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/train_state")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-minutes", type=float, default=None, help="end this leg after this many minutes")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--n-val", type=int, default=5000, help="validation objects used for calibration")
    p.add_argument("--finalize", action="store_true",
                   help="stop here: calibrate and save the model from the last checkpoint (implies --resume)")
    p.add_argument("--arch", default=None, help="JSON dict overriding NetConfig fields (e.g. '{\"width\": 16}')")
    p.set_defaults(func=run)
    return p


def _calibrate_if_val(args: argparse.Namespace, res: dict) -> None:
    """Export the on-the-fly model's last checkpoint into ``--out`` and calibrate it on ``--val`` if given."""
    from .. import train as _train

    _train.export_online(args.out, args.out)
    if args.val:
        from ..calibrate import calibrate_model
        from ..io.survey_store import open_survey

        res["calibration"] = calibrate_model(args.out, open_survey(args.val), n=args.n_val)


def run(args: argparse.Namespace) -> int:
    """Train (on stores or on the fly), print the result as JSON on stdout.

    Returns
    -------
    int
        0 when training finished (the model is written), 3 when a leg ended early (``--max-minutes``) and
        ``--resume`` continues it.

    Raises
    ------
    UserError
        ``--finalize`` with ``--online-steps`` but no training state in ``--out``; neither ``--online-steps`` nor
        both ``--train`` and ``--val``.
    """
    from .. import train as _train
    from ..errors import UserError

    if args.online_steps and args.finalize:  # no further training: export the last checkpoint and calibrate
        if not (Path(args.out) / _train.STATE_DIR / "state.json").exists():
            raise UserError(f"--finalize: no training state in {Path(args.out) / _train.STATE_DIR}")
        res = {"finished": True, "model_dir": args.out}
        _calibrate_if_val(args, res)
        print(json.dumps(res, indent=1, default=str))
        return 0
    if args.online_steps:
        res = _train.train_online(
            args.out, steps=args.online_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            sim_seed=args.sim_seed, sim_config=json.loads(args.sim_config) if args.sim_config else None,
            resume=args.resume, init_from=args.init_from, arch=json.loads(args.arch) if args.arch else None,
            threads=args.threads, device=args.device, max_minutes=args.max_minutes,
            checkpoint_minutes=args.checkpoint_minutes, progress=True, freeze_trunk=args.freeze_trunk,
            val_n=args.online_val_n, val_every=args.val_every)
        if res["finished"]:
            _calibrate_if_val(args, res)
        print(json.dumps(res, indent=1, default=str))
        return 0 if res["finished"] else 3
    if not args.train or not args.val:
        raise UserError("train: --train and --val are required (or use --online-steps for on-the-fly spectra)")
    from ..io.survey_store import open_survey

    res = _train.train_model(open_survey(args.train), open_survey(args.val), args.out, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, resume=args.resume,
                             threads=args.threads, device=args.device,
                             arch=json.loads(args.arch) if args.arch else None, max_minutes=args.max_minutes,
                             checkpoint_minutes=args.checkpoint_minutes, n_val=args.n_val, finalize=args.finalize)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=1, default=str))
    return 0 if res.get("finished") else 3
