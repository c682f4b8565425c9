"""Weighted centroids (centres of mass) of point sets (TorchScript).

The one home of the centroid: the affine stage's centre of mass, the MS-ODENet rigid
search's head centroid and the training data's label-map centre call it. The units
are those of the points (voxel indices, centred voxels, mm), which the caller chooses.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["REDUCTIONS", "weighted_centroid"]

#: the summation orders of :func:`weighted_centroid`.
REDUCTIONS = ("rows", "per_axis")


def weighted_centroid(points: torch.Tensor, weights: torch.Tensor, min_total: Optional[float] = None,
                      reduction: str = "rows") -> torch.Tensor:
    """``sum_i w_i p_i / sum_i w_i``, [d], of points [d, N] (one column per point) and weights [N].

    Args:
        points: Tensor[d, N], in whatever units the centroid is wanted in.
        weights: Tensor[N], non-negative (a mask, or intensities).
        min_total: None, or a floor of the total weight (e.g. 1.0 for a mask
            that may be empty: the centroid is then 0 rather than NaN).
        reduction: the summation order, which only changes the rounding (the
            option reproduces existing outputs bit for bit): ``"rows"``, one
            reduction of the weighted points along dim 1 (the MS-ODENet rigid
            search); ``"per_axis"``, one full reduction per coordinate (the affine
            stage's centre of mass).

    Raises:
        ValueError: unknown ``reduction``.
    """
    total = weights.sum()
    if min_total is not None:
        total = total.clamp_min(min_total)
    if reduction == "rows":
        return (points * weights).sum(1) / total
    if reduction == "per_axis":
        return torch.stack([(points[k] * weights).sum() / total for k in range(int(points.shape[0]))])
    raise ValueError('weighted_centroid(): invalid reduction "' + reduction + '". Must be "rows" or "per_axis"')
