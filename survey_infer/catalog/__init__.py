"""The OUTPUT room: the catalog store and its contract, export to FITS/Parquet, one-object inspection figures.

* :mod:`survey_infer.catalog.schema`: names, dtypes, units and descriptions of the catalog's variables.
* :mod:`survey_infer.catalog.store`: the Zarr catalog (template, aligned block writes, reads, ``open_catalog``).
* :mod:`survey_infer.catalog.export`: FITS / Parquet export and the generated documentation tables.
* :mod:`survey_infer.catalog.inspect`: the one-object inspection figure.
"""
