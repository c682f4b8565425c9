"""Image similarity losses for registration.

:mod:`.functional` holds the stateless functions (``lncc_loss``, ``mse_loss``,
``mutual_information_loss``, ``ngf_loss``); :mod:`.image` wraps them as
``nn.Module``s and provides the ``METRICS`` registry and ``make_metric``.
All are losses to minimize.
"""
from __future__ import annotations

from .functional import box_sum, lncc_loss, mse_loss, mutual_information_loss, ngf_loss
from .image import METRICS, LNCCLoss, MILoss, MSELoss, NGFLoss, make_metric

__all__ = [
    "lncc_loss",
    "mse_loss",
    "mutual_information_loss",
    "ngf_loss",
    "box_sum",
    "LNCCLoss",
    "MSELoss",
    "MILoss",
    "NGFLoss",
    "METRICS",
    "make_metric",
]
