"""Corner-aligned linear resampling of fields between grids of the same box.

``resample_linear(x, shape)`` is ``F.interpolate(x, shape, mode="(bi|tri)linear",
align_corners=True)``: along every axis the first and last samples of the two
grids coincide, and sample ``i`` of the output sits at input index
``i (S_in - 1) / (S_out - 1)``. The compiled op (``itk_odereg::resample_linear``,
CPU and CUDA) runs one two-tap pass per axis, forward and backward (the
adjoint, itself differentiable), where a dense matrix per axis
(:func:`itk_odereg.core.separable.resample_linear`) does ``S_in`` multiply-adds per
output sample, and torch's own trilinear backward scatters with atomics.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..extension import _HAS_OPS
from . import _checks, _reference

__all__ = ["resample_linear"]


def resample_linear(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample [N, C, *S] to [N, C, *shape] by corner-aligned linear interpolation (2D or 3D).

    Units are unchanged: a displacement in voxels of the input grid stays in those
    voxels (scale it by (S_in - 1)/(S_out - 1) per axis for the new grid's).

    Args:
        x: Tensor[N, C, H, W] or Tensor[N, C, D, H, W], float32/float64, CPU or CUDA.
        shape: output spatial size, tensor order, every size >= 1. An input axis
            with one sample is repeated; an output axis with one sample takes the
            first input sample (``align_corners=True``).

    Returns:
        A new tensor [N, C, *shape] (a copy when ``shape`` is ``x``'s own),
        differentiable with respect to ``x`` to any order.
    """
    shape = [int(s) for s in shape]
    if _HAS_OPS and x.device.type in ("cpu", "cuda"):
        return torch.ops.itk_odereg.resample_linear.default(x, shape)
    _checks.check_resample_args(x, shape, "resample_linear", "input")
    return _reference.resample_linear(x, shape)


if _HAS_OPS:

    @torch.library.register_fake("itk_odereg::resample_linear")
    def _resample_linear_fake(x, shape):
        _checks.check_resample_args(x, shape, "resample_linear", "input")
        return x.new_empty((x.shape[0], x.shape[1], *shape))

    @torch.library.register_fake("itk_odereg::_resample_linear_backward")
    def _resample_linear_backward_fake(grad_output, input_shape):
        _checks.check_resample_args(grad_output, input_shape, "_resample_linear_backward", "grad_output")
        return grad_output.new_empty((grad_output.shape[0], grad_output.shape[1], *input_shape))
