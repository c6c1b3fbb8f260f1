"""Configuration and constants of the survey simulator: what :class:`SimConfig` can vary, the truth columns a
simulated survey carries, and the physical constants the galaxy model uses (sources in the comments)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from . import families as fm

SIM_VERSION = "2.0"
KIND_GALAXY, KIND_STAR, KIND_LOWZ, KIND_HIGHZ = 0, 1, 2, 3
FAMILIES = fm.FAMILIES
SFH_KINDS = fm.SFH_KINDS
NO_FAMILY = 255  # template_family / sfh_kind of stars
TRUTH_COLUMNS = {
    "ra": "float64", "dec": "float64", "t_exp": "float32", "z_true": "float32", "logmstar_true": "float32",
    "logsfr_true": "float32", "is_passive": "bool", "mag_h": "float32", "kind": "uint8",
    "template_family": "uint8", "sfh_kind": "uint8", "age_mw_true": "float32", "ew_halpha_rest_true": "float32",
    "av_true": "float32", "sigma_star_true": "float32", "star_index": "int16",
}
#: CF-style flag attributes of the coded truth columns (written to the store by simulate_survey)
COLUMN_FLAGS = {
    "template_family": {"flag_values": list(range(len(FAMILIES))) + [NO_FAMILY],
                        "flag_meanings": " ".join(FAMILIES) + " star",
                        "description": "stellar-population family of the continuum (simulation)"},
    "sfh_kind": {"flag_values": list(range(len(SFH_KINDS))) + [NO_FAMILY],
                 "flag_meanings": " ".join(SFH_KINDS) + " star",
                 "description": "star-formation-history kind (simulation)"},
    "age_mw_true": {"units": "Gyr", "description": "stellar-mass-weighted age (NaN: stars, kcorrect family)"},
    "ew_halpha_rest_true": {"units": "Angstrom", "description": "rest-frame Halpha emission EW, attenuated"},
    "av_true": {"units": "mag", "description": "stellar V-band attenuation"},
    "sigma_star_true": {"units": "km/s", "description": "stellar velocity dispersion (NaN: stars, kcorrect family)"},
    "star_index": {"description": "row of the empirical star library (stars only, else -1)"},
}
#: stellar / nebular colour excess: 0.44 locally (Calzetti 2000), 0.6–0.8 at z ≈ 1–2 (Kashino et al. 2013,
#: Reddy et al. 2015 at low SFR); an intermediate value
NEB_STELLAR_AV = 0.6
#: residual specific SFR (log yr⁻¹) of quenched galaxies: uniform in [floor, max] (moons1d comparison F1: passive
#: RI/H colours at z > 2 span log sSFR −12 … −11); also the floor of every SSP galaxy's sSFR
LOG_SSFR_FLOOR = -12.5
LOG_SSFR_QUENCHED_MAX = -10.8
_NU = 96  # uniform draws per object (fixed: adding uses of them never shifts the noise stream)


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings (stored in the survey attrs as ``simulation.config``).

    Population
    ----------
    z_range : (float, float)
        Redshift range of target galaxies (kind 0), drawn uniformly.
    passive_fraction : float
        Probability of a quenched star-formation history (``old_passive`` or ``post_starburst``); the truth
        ``is_passive`` is sSFR < 0.2 / t_H(z), so a few star-forming histories count as passive too.
    post_starburst_fraction : float
        Share of the quenched histories that are post-starburst (the rest are old passive, formed 1–12 Gyr
        before observation, capped by the age of the Universe).
    sfh_mix : (float, float, float)
        Relative probabilities of the star-forming histories delayed-τ, constant and burst.
    families : tuple of str
        Continuum families drawn (equal probability unless ``family_weights``): any of ``kcorrect``,
        ``m11_marcs``, ``m11_stelib``, ``mastar``, ``bpass``. Leave one out for a leave-one-family-out set.
    family_weights : tuple of float or None
    metallicity_range : (float, float)
        Z/Z☉, drawn log-uniformly (clipped to each family's grid).
    sigma_star_range : (float, float)
        Stellar velocity dispersion, km/s, log-uniform (Gaussian broadening in ln λ).
    smc_fraction : float
        Fraction of galaxies with the SMC-like attenuation law (the rest: Calzetti et al. 2000).
    av_max_sf, av_max_passive : float
        Stellar A_V of star-forming galaxies is av_max_sf × u^1.5, of quenched ones av_max_passive × u.
    weak_line_fraction, line_free_fraction : float
        Fractions of galaxies (any continuum) whose nebular lines are scaled by 10^U(−2, −0.7) or removed;
        the others scatter 0.15 dex about the SFR (Kennicutt & Evans 2012).
    liner_fraction : float
        Fraction of quenched galaxies with weak LINER-like lines (EW(Hα) 0.5–4 Å rest, [NII] ≳ Hα).
    interloper_fraction : float
        Fraction of rows that are interlopers; split by ``interloper_mix`` into stars (empirical spectra),
        galaxies at ``lowz_range`` (kind 2) and at ``highz_range`` (kind 3).
    mag_h_range : (float, float)
        AB magnitude in the top-hat 15000–18000 Å H filter, drawn uniformly (continuum, lines excluded).

    Observation (domain randomisation: one draw per object, or per object and arm)
    -----------
    exposures_h : tuple of float
        Total exposure times (hours), equal probability.
    airmass : float
        1.0–2.0 (sky emission and telluric transmission of the shipped model).
    sky_residual_range : (float, float)
        rms fractional sky-subtraction error of the sky lines (sky minus its running median), per arm; the
        object's level is log-uniform in the range.
    sky_continuum_residual_range : (float, float)
        Same for the smooth sky continuum.
    sky_shift_range_pix : (float, float)
        rms object–sky wavelength-calibration error (pixels; P-Cygni residuals at OH lines).
    telluric_residual_rms : float
        The telluric correction uses T^(1+δ) instead of T, δ ~ N(0, rms) per arm.
    fluxcal_rms : float
        Smooth multiplicative flux-calibration error per arm: 1 + Σ_{l=1..3} c_l P_l(x), c_l ~ N(0, rms/√3).
    arm_offset_rms : float
        Arm-to-arm scale offsets, log-normal with this rms (natural log).
    lsf_scale_range : (float, float)
        Instrumental resolution width multiplier per arm (uniform).
    lsf_slope_range : (float, float)
        Per object p: the LSF σ varies across each arm as (λ/λ_centre)^−p (p = 0: constant R, this simulator's
        nominal law; p = 1: constant FWHM in Å per arm, moons1d's law).
    noise_scale_range : (float, float)
        True noise σ / reported σ (``ivar`` stays nominal), uniform per object and arm (moons1d's RI errors are
        1.29× too small).
    sky_resid_ivar_fraction : float
        Fraction of objects whose ``ivar`` includes the expected variance of the sky-subtraction residual (as a
        pipeline propagating its sky-model error); the others do not.
    seeing_range : (float, float)
        FWHM seeing at 5000 Å and zenith, arcsec, uniform; FWHM(λ) = seeing (λ/5000 Å)^−0.2 X^0.6.
    size_range : (float, float)
        Half-light radius of galaxies (arcsec, uniform; stars are points).
    adr_airmass_range : (float, float)
        Airmass X per object for seeing and atmospheric differential refraction (offset relative to 1.2 µm,
        Paranal pressure); the sky model uses ``airmass``.
    chromatic_aperture_fraction : float
        Fraction of objects whose delivered flux keeps the chromatic fibre loss (flux × aperture(λ), as moons1d's
        calibration delivers it); for the others the aperture is calibrated out exactly.
    throughput_scale_range : (float, float)
        Throughput multiplier per object (S/N only; calibrated out): 0.8 ≈ moons1d's "worst" vs "best" curves.
    aperture_efficiency : float or None
        A fixed, achromatic aperture efficiency instead of the seeing model.
    sky_sub_variance_range : (float, float)
        Sky/dark/read variance multiplier per object (1 = staring, 2 = cross-switching).
    dit_s, n_spatial_pix : float
        Single exposure time (read-noise accounting) and pixels summed across the trace.
    telluric_correct : bool
        Divide the delivered spectrum by the telluric transmission (as a pipeline does).
    sigma_v_max_kms : float
        Cap on the gas velocity dispersion.
    """

    z_range: tuple[float, float] = (0.9, 2.6)
    passive_fraction: float = 0.33
    post_starburst_fraction: float = 0.3
    sfh_mix: tuple[float, float, float] = (0.45, 0.25, 0.3)
    families: tuple[str, ...] = FAMILIES
    family_weights: tuple[float, ...] | None = None
    metallicity_range: tuple[float, float] = (0.2, 2.5)
    sigma_star_range: tuple[float, float] = (50.0, 350.0)
    smc_fraction: float = 0.3
    av_max_sf: float = 2.5
    av_max_passive: float = 0.5
    weak_line_fraction: float = 0.12
    line_free_fraction: float = 0.06
    liner_fraction: float = 0.3
    interloper_fraction: float = 0.05
    interloper_mix: tuple[float, float, float] = (0.4, 0.4, 0.2)
    lowz_range: tuple[float, float] = (0.05, 0.9)
    highz_range: tuple[float, float] = (2.6, 4.0)
    mag_h_range: tuple[float, float] = (21.0, 25.0)
    exposures_h: tuple[float, ...] = (2.0, 4.0, 8.0)
    airmass: float = 1.0
    sky_residual_range: tuple[float, float] = (0.0005, 0.02)
    sky_continuum_residual_range: tuple[float, float] = (0.0002, 0.003)
    sky_shift_range_pix: tuple[float, float] = (0.001, 0.02)
    telluric_residual_rms: float = 0.03
    fluxcal_rms: float = 0.03
    arm_offset_rms: float = 0.03
    lsf_scale_range: tuple[float, float] = (0.9, 1.1)
    lsf_slope_range: tuple[float, float] = (0.0, 1.0)
    noise_scale_range: tuple[float, float] = (0.95, 1.3)
    sky_resid_ivar_fraction: float = 0.3
    seeing_range: tuple[float, float] = (0.4, 1.2)
    size_range: tuple[float, float] = (0.0, 0.6)
    adr_airmass_range: tuple[float, float] = (1.0, 1.5)
    chromatic_aperture_fraction: float = 0.5
    throughput_scale_range: tuple[float, float] = (0.8, 1.0)
    aperture_efficiency: float | None = None
    sky_sub_variance_range: tuple[float, float] = (1.0, 2.0)
    dit_s: float = 600.0
    n_spatial_pix: float = 1.0
    telluric_correct: bool = True
    sigma_v_max_kms: float = 400.0
    ms_scatter_dex: float = 0.3
    field_center_deg: tuple[float, float] = (150.1, 2.2)
    field_size_deg: float = 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SimConfig":
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**kw)

    def validate(self) -> None:
        """Raise ``ValueError`` (one line naming the field) on an inconsistent setting."""
        for name in ("passive_fraction", "interloper_fraction", "post_starburst_fraction", "smc_fraction",
                     "weak_line_fraction", "line_free_fraction", "liner_fraction", "sky_resid_ivar_fraction",
                     "chromatic_aperture_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.weak_line_fraction + self.line_free_fraction > 1:
            raise ValueError("weak_line_fraction + line_free_fraction must be <= 1")
        if self.z_range[0] >= self.z_range[1] or self.z_range[0] < 0:
            raise ValueError(f"bad z_range {self.z_range}")
        if self.mag_h_range[0] > self.mag_h_range[1]:
            raise ValueError(f"bad mag_h_range {self.mag_h_range}")
        if not self.exposures_h or min(self.exposures_h) <= 0:
            raise ValueError(f"bad exposures_h {self.exposures_h}")
        if not self.families:
            raise ValueError("families must name at least one template family")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"unknown template families {bad}; known: {', '.join(FAMILIES)}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families repeats a name: {self.families}")
        if self.family_weights is not None and (len(self.family_weights) != len(self.families)
                                                or min(self.family_weights) < 0 or sum(self.family_weights) <= 0):
            raise ValueError("family_weights must give one non-negative weight per family, not all zero")
        for name in ("metallicity_range", "sigma_star_range", "sky_residual_range", "sky_continuum_residual_range",
                     "sky_shift_range_pix", "lsf_scale_range", "noise_scale_range", "seeing_range", "size_range",
                     "lsf_slope_range", "adr_airmass_range", "throughput_scale_range", "sky_sub_variance_range"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ValueError(f"{name} must be 0 <= low <= high, got {(lo, hi)}")
        if self.metallicity_range[0] <= 0 or self.sigma_star_range[0] <= 0 or self.seeing_range[0] <= 0:
            raise ValueError("metallicity_range, sigma_star_range and seeing_range must be positive")
        if self.adr_airmass_range[0] < 1 or self.throughput_scale_range[0] <= 0:
            raise ValueError("adr_airmass_range must be >= 1 and throughput_scale_range positive")
        if len(self.sfh_mix) != 3 or min(self.sfh_mix) < 0 or sum(self.sfh_mix) <= 0:
            raise ValueError(f"sfh_mix needs 3 non-negative weights, got {self.sfh_mix}")
        if self.aperture_efficiency is not None and not 0 < self.aperture_efficiency <= 1:
            raise ValueError(f"aperture_efficiency must lie in (0, 1], got {self.aperture_efficiency}")
