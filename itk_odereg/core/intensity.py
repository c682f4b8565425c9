"""Robust intensity ranges and the normalization every stage sees: one home for both."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["robust_range", "normalize_intensity"]

#: samples the nearest-rank variant reads at most (Mattes MI's bin range, NODEO's MI set-up)
NEAREST_RANK_SAMPLES = 1 << 16
#: samples the interpolated variant reads at most (the engine's intensity normalization)
INTERPOLATED_SAMPLES = 200_000


def robust_range(x: torch.Tensor, percentiles: Tuple[float, float] = (1.0, 99.0), *,
                 interpolation: str = "nearest") -> Tuple[float, float]:
    """Intensity range of the tensor ``x`` (any shape) from two percentiles (0 and 100: exact min and max).

    Both variants read an evenly strided subsample, so the cost does not grow with the image:

    * ``interpolation="nearest"``: nearest-rank order statistics (``kthvalue``, linear time) of
      at most 2^16 samples (stride ``ceil(n / 2^16)``); used by the Mattes MI histograms;
    * ``interpolation="linear"``: ``torch.quantile``'s linear interpolation, in float64, of
      about 200 000 samples (stride ``max(1, n // 200000)``); used by :func:`normalize_intensity`.

    Returns:
        (low, high) as Python floats, in the units of ``x``.
    """
    lo_p, hi_p = percentiles
    flat = x.detach().reshape(-1)
    if interpolation == "linear":
        return _interpolated_range(flat, lo_p, hi_p)
    if interpolation != "nearest":
        raise ValueError(f"robust_range(): 'interpolation' must be 'nearest' or 'linear', got {interpolation!r}")
    if lo_p == 0.0 and hi_p == 100.0:
        lo, hi = torch.aminmax(flat)
        return float(lo), float(hi)
    stride = max(1, -(-flat.numel() // NEAREST_RANK_SAMPLES))
    sub = flat[::stride]
    last = sub.numel() - 1

    def order_stat(p: float) -> float:
        if p == 0.0:
            return float(sub.min())
        if p == 100.0:
            return float(sub.max())
        return float(sub.kthvalue(int(round(p / 100.0 * last)) + 1).values)

    return order_stat(lo_p), order_stat(hi_p)


def _interpolated_bounds(flat: torch.Tensor, lo_p: float, hi_p: float,
                         samples: int = INTERPOLATED_SAMPLES) -> torch.Tensor:
    """The ``interpolation="linear"`` percentiles of a flat tensor as a float64 tensor [low, high]
    (TorchScript- and torch.export-compatible: no Python number is read from the data; the sample
    count is a default argument, since TorchScript cannot read module-level numbers)."""
    sample = flat[:: max(1, flat.numel() // samples)]
    q = torch.tensor([lo_p / 100.0, hi_p / 100.0], dtype=torch.float64, device=flat.device)
    return torch.quantile(sample.double(), q)


def _interpolated_range(flat: torch.Tensor, lo_p: float, hi_p: float,
                        samples: int = INTERPOLATED_SAMPLES) -> Tuple[float, float]:
    """The ``interpolation="linear"`` variant of :func:`robust_range` on a flat tensor."""
    bounds = _interpolated_bounds(flat, lo_p, hi_p, samples)
    return float(bounds[0]), float(bounds[1])


def normalize_intensity(image: torch.Tensor) -> torch.Tensor:
    """Map the 1st..99th percentile of ``image`` to [0, 1] (no clipping); a constant image is only shifted.

    TorchScript- and torch.export-compatible (the bounds stay tensors): the exported MS-ODENet
    module and program (:mod:`itk_odereg.msodenet.export`) normalize their inputs with it, as the
    engine does. The result keeps ``image``'s dtype (the float64 bounds are 0-dim tensors).
    """
    bounds = _interpolated_bounds(image.detach().reshape(-1), 1.0, 99.0)
    width = bounds[1] - bounds[0]
    scale = torch.where(width > 0, width, torch.ones_like(width))
    return (image - bounds[0]) / scale
