"""When to stop optimizing a pyramid level: the convergence window of ANTs.

Both stages (affine and NODEO) run Adam for at most a set number of
iterations per level; they stop earlier once the loss has flattened.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["converged"]


def converged(losses: Sequence[float], window: int, threshold: float) -> bool:
    """ANTs-style convergence test on the loss of one pyramid level.

    The slope of the least-squares line through the last ``window`` losses,
    divided by their mean magnitude, is the relative decrease per iteration;
    the level has converged when it is below ``threshold`` (as the
    ``--convergence [iterations, threshold, window]`` option of
    antsRegistration stops on the slope of its energy profile). False while
    fewer than ``window`` losses exist or when ``threshold`` is 0.
    """
    if threshold <= 0 or len(losses) < window:
        return False
    recent = losses[-window:]
    mean_x = (window - 1) / 2.0
    mean_y = sum(recent) / window
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(recent)) / sum(
        (i - mean_x) ** 2 for i in range(window))
    return -slope < threshold * max(abs(mean_y), 1e-12)
