"""In-place box sums (moving-window sums with zero padding), the building block of the LNCC loss.

``box_sum_(x, radii)`` replaces ``x`` by its sums over centred windows of
half-width ``radii[k]`` voxels along its last ``len(radii)`` dims: the same as
a convolution with a ones kernel of width ``2 r + 1`` and zero padding, in
O(1) per voxel and axis. The compiled kernel (``itk_odereg::_box_sum_``, CPU
and CUDA) accumulates in float64 and does each axis in one pass; the
pure-PyTorch fallback (:func:`itk_odereg.ops._reference.box_sum_`) issues two
small operations per slice, which dominated the loss at coarse pyramid levels.
Not differentiable by itself: :func:`itk_odereg.losses.functional.box_sum`
wraps it with its (self-adjoint) backward.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..extension import _HAS_OPS
from . import _reference

__all__ = ["box_sum_"]


def box_sum_(x: torch.Tensor, radii: Sequence[int]) -> torch.Tensor:
    """In place: ``x`` becomes its box sums over the last ``len(radii)`` dims; returns ``x``.

    Args:
        x: contiguous float32/float64 tensor, CPU or CUDA.
        radii: half-widths in voxels (window ``2 r + 1``), one per trailing dim, in tensor order;
            windows are clipped at the border (zero padding).
    """
    radii = [int(r) for r in radii]
    if _HAS_OPS and x.device.type in ("cpu", "cuda"):
        torch.ops.itk_odereg._box_sum_.default(x, radii)
        return x
    return _reference.box_sum_(x, radii)


if _HAS_OPS:

    @torch.library.register_fake("itk_odereg::_box_sum_")
    def _box_sum_fake(x, radii):
        if not x.is_contiguous():
            raise RuntimeError("itk_odereg._box_sum_(): 'x' must be contiguous (it is summed in place)")
        return None
