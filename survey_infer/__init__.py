"""survey-infer: survey-scale redshift, stellar-mass and SFR inference for galaxy spectra.

A multi-task 1D residual CNN with Monte Carlo dropout (after M-TOPnet, Ginolfi et al. 2025, A&A 693, A73)
mapped over Zarr-chunked spectra by Dask, writing an xarray catalog with per-object uncertainties and flags.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
