"""The network (``network``), counter-based MC dropout (``mc``), checkpoints (``checkpoint``) and batched
inference (``inference``)."""
