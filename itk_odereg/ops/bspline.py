"""Cubic B-spline control grids to dense fields (MS-ODENet's and elastix's parameterization)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..extension import _HAS_OPS
from . import _checks, _reference

__all__ = ["bspline_to_dense", "bspline_control_shape"]


def bspline_control_shape(shape: Sequence[int], control_spacing: Sequence[int]) -> list[int]:
    """Control grid size that covers a dense grid: ``floor((S - 1) / s) + 4`` per axis.

    Args:
        shape: dense spatial size, tensor order ((D, H, W) or (H, W)).
        control_spacing: integer control-point spacing in voxels, same order.
    """
    if len(shape) != len(control_spacing):
        raise ValueError(
            f"itk_odereg.bspline_control_shape(): 'shape' {list(shape)} and 'control_spacing' "
            f"{list(control_spacing)} must have the same length"
        )
    if any(int(s) < 1 for s in control_spacing) or any(int(s) < 1 for s in shape):
        raise ValueError("itk_odereg.bspline_control_shape(): sizes and spacings must be positive integers")
    return [_checks.bspline_control_size(int(s), int(h)) for s, h in zip(shape, control_spacing)]


def bspline_to_dense(control: torch.Tensor, shape: Sequence[int], control_spacing: Sequence[int]) -> torch.Tensor:
    """Evaluate a uniform cubic B-spline tensor-product field on a dense voxel grid.

    Along each axis, control point ``k`` sits at voxel ``(k - 1) * s`` for the
    integer control spacing ``s``: the grid starts one control point before
    voxel 0 and needs ``G = floor((S - 1) / s) + 4`` points (see
    :func:`bspline_control_shape`). A control grid that is a linear function of
    the control index gives an exactly linear dense field.

    Linear in ``control``; its backward is the adjoint (transpose) map, itself
    differentiable. CPU and CUDA.

    Args:
        control: Tensor[N, C, *G] (2 or 3 spatial dims), float32 or float64. For a
            displacement, C = d channels in voxel units, tensor order.
        shape: dense spatial size (tensor order), e.g. ``(D, H, W)``.
        control_spacing: integer spacing of control points in voxels, tensor order.

    Returns:
        Tensor[N, C, *shape].

    Raises:
        RuntimeError: if the grid size does not match ``shape`` and spacing, or
            on wrong rank or dtype.
    """
    shape = [int(s) for s in shape]
    control_spacing = [int(s) for s in control_spacing]
    if _HAS_OPS:
        return torch.ops.itk_odereg.bspline_to_dense.default(control, shape, control_spacing)
    _checks.check_bspline_args(control, shape, control_spacing, "bspline_to_dense")
    return _reference.bspline_to_dense(control, shape, control_spacing)


if _HAS_OPS:

    @torch.library.register_fake("itk_odereg::bspline_to_dense")
    def _bspline_to_dense_fake(control, shape, control_spacing):
        _checks.check_bspline_args(control, shape, control_spacing, "bspline_to_dense")
        return control.new_empty((control.shape[0], control.shape[1], *shape))

    @torch.library.register_fake("itk_odereg::_bspline_to_dense_backward")
    def _bspline_to_dense_backward_fake(grad_output, control_shape, control_spacing):
        return grad_output.new_empty((grad_output.shape[0], grad_output.shape[1], *control_shape))
