"""When to stop optimizing a pyramid level: the convergence window of ANTs.

Both stages (affine and NODEO) run Adam for at most a set number of
iterations per level; they stop earlier once the loss has flattened.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

__all__ = ["converged", "record_iteration"]


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


def record_iteration(record: dict, history: list, level_losses: list, window: int, threshold: float,
                     progress: Optional[Callable[[dict], None]]) -> bool:
    """Book one iteration of a level: append ``record``, test convergence, report it; True to stop the level.

    A converged record carries ``"converged": True``, so the progress bar and the loss
    history show where a level stopped early.
    """
    history.append(record)
    level_losses.append(record["loss"])
    stop = converged(level_losses, window, threshold)
    if stop:
        record["converged"] = True
    if progress is not None:
        progress(record)
    return stop
