"""Input/output: the survey store, readers for spectrum files, ingest, the catalog store and export."""
