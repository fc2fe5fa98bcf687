"""Training: the one loop (``fit``), precision, checkpoints."""

from vaelab.training.loop import fit

__all__ = ["fit"]
