"""The distributed run: graph and driver (``runner``), the per-block task and worker plugin (``worker``),
the resume protocol (``resume``: fingerprints, done-markers, lease lock) and the ``run``/``status`` commands."""
