"""``survey-infer demo``: the embedded default job.

Simulates a small MOONS survey (3,000 spectra by default), runs the shipped model over it on a local Dask
cluster (2 worker processes, T = 50), prints the run summary and the accuracy against the simulation's truth,
and writes the catalog plus a summary figure. Re-running resumes (nothing is recomputed). The folder holds the
simulated spectra (``survey.zarr``, roughly 80-90 kB per spectrum: about 250 MB for 3,000), the catalog
(``catalog.zarr``, with the PDFs) and ``demo.png``; the last lines printed give their sizes.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def demo_figure(catalog: Path, out_png: Path) -> None:
    """z_pred vs z_true, a few PDFs and the flag counts of a catalog with truth columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .flags import ZWARN_BITS
    from .catalog.store import open_catalog

    cat = open_catalog(catalog)
    z, zt = cat["z"].values, cat["z_true"].values
    rel, kind = cat["z_reliable"].values.astype(bool), cat["kind"].values
    zw = cat["zwarn"].values.astype(np.int64)
    gal = (kind == 0) & np.isfinite(z)
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    ax[0].scatter(zt[gal & ~rel], z[gal & ~rel], s=4, c="0.65", label="set aside")
    ax[0].scatter(zt[gal & rel], z[gal & rel], s=4, c="C0", label="z_reliable")
    ax[0].plot([0.9, 2.6], [0.9, 2.6], "k-", lw=0.5)
    acc = np.mean(np.abs(z[gal] - zt[gal]) < 0.01) if gal.any() else np.nan
    acc_r = np.mean(np.abs(z[gal & rel] - zt[gal & rel]) < 0.01) if (gal & rel).any() else np.nan
    ax[0].set(xlabel="z true", ylabel="z (PDF mode)", xlim=(0.85, 2.65), ylim=(0.85, 2.65),
              title=f"|dz|<0.01: {acc:.3f} all, {acc_r:.3f} reliable ({1 - (gal & rel).sum() / max(gal.sum(), 1):.0%} set aside)")
    ax[0].legend(markerscale=3, fontsize=8)
    if "pz" in cat:
        zg = cat["z_grid"].values
        picks = []
        q = cat["quality"].values
        for cond in (gal & rel, gal & ~rel, gal & rel & (cat["pz_npeaks"].values > 1)):
            idx = np.flatnonzero(cond)
            if idx.size:
                picks.append(int(idx[len(idx) // 2]))
        for i, r in enumerate(picks[:3]):
            ax[1].plot(zg, cat["pz"].values[r].astype(float), color=f"C{i}",
                       label=f"id {int(cat['object_id'].values[r])}: z={z[r]:.3f} (true {zt[r]:.3f}) q={q[r]:.2f}")
            ax[1].axvline(zt[r], color=f"C{i}", ls=":", lw=0.8)
        ax[1].set(xlabel="z", ylabel="p per bin (dz = 0.003)", title="example redshift PDFs (dotted: truth)")
        ax[1].legend(fontsize=7)
    used = [b for b in ZWARN_BITS if b.used]  # the bits survey-infer sets
    names = [f"{b.name} ({b.bit})" for b in used]
    counts = [int(((zw & b.value) != 0).sum()) for b in used]
    colors = ["C3" if b.bad else "C7" for b in used]
    ax[2].barh(names, counts, color=colors)
    ax[2].set(xlabel="objects", title="zwarn bits (red = bad mask)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def _size(p: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _human(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def run_demo(out: str | Path = "survey-infer-demo", n: int = 3000, seed: int = 2026, workers: int = 2,
             mc_samples: int = 50, model: str = "default", progress: bool = True) -> int:
    from .catalog.store import open_catalog
    from .evaluate import evaluate_catalog, format_report
    from .pipeline.summary import print_summary
    from .pipeline.runner import run_catalog
    from .io.simulated import simulate_survey

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store, catalog, png = out / "survey.zarr", out / "catalog.zarr", out / "demo.png"
    t0 = time.time()
    if not store.exists():
        print(f"[1/3] simulating {n:,} MOONS LR spectra (seed {seed}) -> {store}")
        simulate_survey(n, seed, store, chunk_objects=256, progress=progress)
    else:
        print(f"[1/3] using the simulated survey already in {store}")
    print(f"[2/3] running the shipped model on a local cluster ({workers} workers, T={mc_samples}) -> {catalog}")
    from .errors import FingerprintMismatch

    try:
        s = run_catalog(store, catalog, model=model, cluster="local", workers=workers, mc_samples=mc_samples,
                        progress=progress)
    except FingerprintMismatch as exc:
        from .errors import UserError

        raise UserError(f"{catalog} was made by an earlier demo with other settings or another model "
                        f"({str(exc).splitlines()[1].strip()}); use --out NEW_FOLDER or delete {out}") from exc
    print_summary(s, out=sys.stdout)  # today's stdout (the default is bound when the module is imported)
    print(f"[3/3] accuracy against the simulation's truth -> {png}")
    m = evaluate_catalog(open_catalog(catalog))
    print(format_report(m))
    demo_figure(catalog, png)
    sizes = ", ".join(f"{p.name} {_human(_size(p))}" for p in (store, catalog, png))
    print(f"\ndone in {time.time() - t0:.0f} s. {out}: {sizes} (delete the folder when done).")
    print(f"Next: survey-infer export {catalog} --format fits --out {out}/catalog.fits ; "
          f"survey-infer inspect {catalog} --object <ID> --out {out}/object.png")
    return 0 if s.ok else 1
