"""Write a simulated survey to a store: one Dask task per store chunk, each writing its own region.

The simulator (:mod:`survey_infer.simulate`) makes the spectra; this module of the input room writes them, like
:mod:`survey_infer.io.ingest` writes spectra read from files.
"""
from __future__ import annotations

import logging
from pathlib import Path


from ..instrument import Instrument, load_instrument
from ..simulate.simulator import COLUMN_FLAGS, SIM_VERSION, TRUTH_COLUMNS, SimConfig, simulate_block
from .survey_store import SurveyWriter, create_survey

__all__ = ["simulate_survey"]
log = logging.getLogger(__name__)


def _write_chunk(writer: SurveyWriter, start: int, n: int, seed: int, cfg: SimConfig, inst_cfg: dict) -> dict:
    inst = load_instrument(inst_cfg)
    data = simulate_block(start, n, seed, cfg, inst)
    counts = dict(writer.write(start, data))
    counts["n_rows"] = int(n)
    return counts


def simulate_survey(n: int, seed: int, out: str | Path, *, config: SimConfig | None = None,
                    chunk_objects: int = 256, overwrite: bool = False, scheduler=None, num_workers: int | None = None,
                    instrument: Instrument | str | None = None, progress: bool = False) -> Path:
    """Simulate ``n`` spectra with ``seed`` into the survey store ``out``.

    Parameters
    ----------
    n, seed : int
    out : path
        Store location; written under a temporary name and renamed on success.
    config : SimConfig, optional
    chunk_objects : int
        Rows per store chunk = per task.
    overwrite : bool
        Replace an existing store.
    scheduler : None, str or distributed.Client
        ``None`` → dask's threaded scheduler; ``"processes"`` / ``"synchronous"`` / ``"threads"``; or a
        ``distributed.Client`` (tasks run on its workers, which must see ``out``'s file system).
    num_workers : int, optional
        Worker count for the local schedulers.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Path
        The committed store. Its attrs hold ``simulation = {"seed", "config", "version", "n"}``; the coded
        truth columns ``template_family`` and ``sfh_kind`` carry ``flag_values`` / ``flag_meanings`` attrs.
    """
    import dask

    cfg = config or SimConfig()
    cfg.validate()
    if int(n) <= 0:
        raise ValueError(f"n must be positive, got {n}")
    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    chunk = int(max(1, min(chunk_objects, n)))
    writer = create_survey(out, int(n), inst, chunk_objects=chunk, columns=dict(TRUTH_COLUMNS), overwrite=overwrite,
                           attrs={"simulation": {"seed": int(seed), "n": int(n), "version": SIM_VERSION,
                                                 "config": cfg.to_dict()}})
    for name, attrs in COLUMN_FLAGS.items():  # CF flag_values / flag_meanings, units of the new truth columns
        writer.group[name].attrs.update(attrs)
    starts = list(range(0, int(n), chunk))
    tasks = [dask.delayed(_write_chunk, pure=False)(writer, s, min(chunk, n - s), int(seed), cfg, inst.config)
             for s in starts]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(n), unit="spec", desc="simulate")
    try:
        counts_list = []
        if scheduler is not None and not isinstance(scheduler, str):  # distributed.Client
            from distributed import as_completed

            futs = scheduler.compute(tasks)
            for f in as_completed(futs):
                counts_list.append(f.result())
                if bar is not None:
                    bar.update(counts_list[-1]["n_rows"])
        else:
            from dask.callbacks import Callback

            class _Bar(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    if bar is not None and isinstance(result, dict) and "n_rows" in result:
                        bar.update(result["n_rows"])

            with _Bar():
                counts_list = list(dask.compute(*tasks, scheduler=scheduler or "threads", num_workers=num_workers))
        totals = {k: int(sum(c.get(k, 0) for c in counts_list)) for k in ("nonfinite_flux", "bad_ivar", "masked")}
        return writer.commit(counts=totals)
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
