"""The RUN room: ``runner`` (the driver: :func:`~survey_infer.pipeline.runner.run_catalog`) → ``plan`` (job, run id,
pending blocks with reasons) → ``execute`` (block tasks on the cluster) → ``record`` (proof and run record);
``worker`` (the per-block task and model plug-in), ``resume`` (fingerprints, done-markers, is a block done),
``lock`` and ``liveness`` (the lease lock), ``status``, ``summary``, ``faults``, and ``clusters`` (where the
workers come from: :func:`~survey_infer.pipeline.clusters.start_client`)."""
