"""What an ingest did: :class:`IngestReport` (returned by :func:`survey_infer.io.ingest.ingest`, printed by the
command, written as JSON with ``--report``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["IngestReport", "LOW_COVERAGE_FRACTION"]

#: spectra with data in fewer than this fraction of the instrument channels are listed in the report
LOW_COVERAGE_FRACTION = 0.05


@dataclass
class IngestReport:
    """What an ingest did. ``ok`` is True when every input was ingested or deliberately skipped.

    Attributes
    ----------
    store : str
        Store path.
    instrument : str
        Instrument (grid) name.
    created : bool
        True when this run created the store.
    n_inputs : int
        Distinct input files.
    n_files_ingested : int
        Files whose spectra were written in this run.
    n_spectra : int
        Rows written in this run.
    rows : (int, int)
        Row range ``[start, end)`` written.
    object_ids : (int, int) or None
        First and last ``object_id`` assigned.
    n_skipped_ingested : int
        Inputs skipped because the store already holds them (``skipped_examples`` lists a few).
    duplicates : list of (path, duplicate_of)
        Inputs skipped because their content equals another ingested file.
    companions : list of str
        Companion files (e.g. DESI redrock) recognised and skipped.
    bad_files : list of (path, reason)
        Unreadable inputs (only with ``skip_bad``; otherwise the first one raises).
    low_coverage : list of (object_id, name, fraction)
        Spectra with data in fewer than 5% of the instrument channels (the first 1000; ``n_low_coverage`` counts
        them all).
    source_counts : dict
        Invalid source pixels before resampling: ``nonfinite_flux``, ``bad_ivar`` (NaN/inf/negative), ``masked``.
    sanitized : dict
        Store channels sanitized at write time (see :func:`survey_infer.io.survey_store.sanitize_spectra`).
    by_reader : dict
        Files ingested per reader.
    elapsed_s : float
    """

    store: str
    instrument: str = ""
    created: bool = False
    n_inputs: int = 0
    n_files_ingested: int = 0
    n_spectra: int = 0
    rows: tuple[int, int] = (0, 0)
    object_ids: tuple[int, int] | None = None
    n_skipped_ingested: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    n_duplicate_inputs: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    unfilled_columns: list[str] = field(default_factory=list)
    companions: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    low_coverage: list[tuple[int, str, float]] = field(default_factory=list)
    n_low_coverage: int = 0
    source_counts: dict = field(default_factory=lambda: {"nonfinite_flux": 0, "bad_ivar": 0, "masked": 0})
    sanitized: dict = field(default_factory=dict)
    by_reader: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every input was ingested or deliberately skipped (no unreadable file)."""
        return not self.bad_files

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict (``ok`` included)."""
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"ingest -> {self.store} ({self.instrument}{', new store' if self.created else ''}): "
            f"{self.n_spectra} spectra from {self.n_files_ingested} files"
            + (f", rows {self.rows[0]}..{self.rows[1] - 1}, object_id {self.object_ids[0]}..{self.object_ids[1]}"
               if self.n_spectra else ""),
        ]
        if self.by_reader:
            lines.append("  formats: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_reader.items())))
        if self.n_skipped_ingested:
            lines.append(f"  skipped {self.n_skipped_ingested} files already in the store")
        if self.duplicates:
            lines.append(f"  skipped {len(self.duplicates)} duplicate files (same content as an ingested file)")
        if self.n_duplicate_inputs:
            lines.append(f"  ignored {self.n_duplicate_inputs} repeated input paths")
        if self.companions:
            lines.append(f"  skipped {len(self.companions)} companion files (no spectrum): "
                         + ", ".join(Path(p).name for p in self.companions[:5]))
        if self.changed_files:
            lines.append(f"  {len(self.changed_files)} files changed since a previous ingest were ingested again")
        if self.added_columns:
            lines.append(f"  new column(s) {', '.join(self.added_columns)} added to the store (fill value, NaN or -1, "
                         f"for the {self.rows[0]} earlier rows); catalogs made before keep their own columns")
        if self.unfilled_columns:
            lines.append(f"  column(s) {', '.join(self.unfilled_columns)} of the store are not given by the appended "
                         f"files: their fill value (NaN, -1, 0 or False) for the new rows")
        sc = self.source_counts
        if any(sc.values()):
            lines.append(f"  source pixels set to ivar=0: {sc['nonfinite_flux']} non-finite flux, {sc['bad_ivar']} "
                         f"NaN/inf/negative ivar, {sc['masked']} masked by the reduction")
        st = self.sanitized
        if st and any(st.values()):
            lines.append(f"  stored channels: {st.get('nonfinite_flux', 0)} non-finite flux and {st.get('bad_ivar', 0)} "
                         f"invalid ivar set to 0; {st.get('masked', 0)} flagged in mask (bad source pixels)")
        if self.n_low_coverage:
            lines.append(f"  {self.n_low_coverage} spectra have data in < {LOW_COVERAGE_FRACTION:.0%} of the "
                         f"{self.instrument} channels (e.g. {self.low_coverage[0][1]}: {self.low_coverage[0][2]:.1%})")
        if self.bad_files:
            lines.append(f"  {len(self.bad_files)} UNREADABLE files skipped:")
            lines += [f"    {p}: {r}" for p, r in self.bad_files[:20]]
        lines.append(f"  {self.elapsed_s:.1f} s")
        return "\n".join(lines)

