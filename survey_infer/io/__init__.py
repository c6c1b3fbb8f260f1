"""The INPUT room: spectrum files -> survey store. :mod:`.readers` (one reader per format, content sniffing, FITS
via astropy), :mod:`.resample` (flux-conserving resampling onto the instrument grid), :mod:`.ingest` (discover ->
read -> write) and :mod:`.survey_store` (the store's layout, writer and checks). The catalog (the OUTPUT room) is
:mod:`survey_infer.catalog`."""
