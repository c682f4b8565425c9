"""Sampling an image at arbitrary points: the one path from coordinates to ``grid_sample``.

Three frames meet here (see :class:`~itk_odereg.core.grid.Axes`):

* **world**: physical points (x, y, z), LPS millimetres;
* **voxel**: continuous indices in tensor axis order (z, y, x), 0 at the first voxel centre;
* **normalized**: ``grid_sample``'s ``align_corners=True`` frame, -1 and +1 at the outermost
  voxel centres of each axis, components in (x, y, z) order, last.

:func:`world_to_voxel` and :func:`voxel_to_normalized` are the two coordinate maps and
:func:`sample_normalized` the one call to ``grid_sample``. The engine, the affine stage and the
QC figure reach it through :func:`sample_at_world_points`; MS-ODENet's rigid search, which
works in the model grid's own centred voxels, calls :func:`sample_normalized` directly.
Everything here is TorchScript-compatible, so the exported MS-ODENet module can use it.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

__all__ = ["world_to_voxel", "voxel_to_normalized", "sample_normalized", "sample_at_world_points", "sample_at_points"]


def world_to_voxel(world: torch.Tensor, world_to_voxel_matrix: torch.Tensor) -> torch.Tensor:
    """Continuous tensor-order indices ``[P, d]`` (z, y, x) of physical points ``[P, d]`` (x, y, z; mm).

    ``world_to_voxel_matrix`` is the grid's homogeneous ``(d+1, d+1)`` matrix,
    :meth:`ImageGrid.world_to_voxel_matrix_torch_order`, as a tensor of ``world``'s dtype.
    """
    return world @ world_to_voxel_matrix[:-1, :-1].T + world_to_voxel_matrix[:-1, -1]


def voxel_to_normalized(index: torch.Tensor, shape: List[int]) -> torch.Tensor:
    """``grid_sample`` coordinates ``[P, d]`` ((x, y, z), ``align_corners=True``) of tensor-order indices ``[P, d]``.

    A size-1 axis maps its only voxel to 0 (grid_sample samples it there).
    """
    ndim = len(shape)
    norm = [2 * index[:, d] / max(shape[d] - 1, 1) - 1 for d in range(ndim)]
    norm.reverse()
    return torch.stack(norm, -1)


def sample_normalized(image: torch.Tensor, normalized: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Linear samples of ``image`` ``[N, C, *S]`` at ``normalized`` ``[N, *out_shape, d]`` (grid_sample frame).

    Args:
        padding: ``"zeros"`` (fades to 0 over the half voxel beyond the outermost centres)
            or ``"border"`` (repeats the edge value), as ``grid_sample``'s ``padding_mode``.
    """
    return F.grid_sample(image, normalized.to(image.dtype), mode="bilinear", padding_mode=padding,
                         align_corners=True)


def sample_at_world_points(image: torch.Tensor, world_to_voxel_matrix: torch.Tensor, world: torch.Tensor,
                           out_shape: List[int], outside: str = "itk") -> torch.Tensor:
    """Linear samples of ``image`` ``[1, C, *S]`` at physical points ``world`` ``[P, d]`` (x, y, z; LPS mm).

    Args:
        world_to_voxel_matrix: the image grid's world-to-voxel matrix (see :func:`world_to_voxel`).
        out_shape: the shape the ``P`` points fill (``P = prod(out_shape)``).
        outside: ``"itk"`` follows ITK's ``LinearInterpolateImageFunction`` as ``sitk.Resample``
            uses it with default value 0, and ITK's ``DisplacementFieldTransform``, which gives
            no displacement outside its field: a point is inside when its continuous index lies in
            ``[-0.5, size - 0.5]`` on every axis; between the outermost voxel centre and that edge
            the edge value is repeated; outside, the value is 0. ``"zeros"`` is ``grid_sample``'s
            zero padding (smooth in the point, as the affine stage's gradients want).

    Returns:
        ``[1, C, *out_shape]``.
    """
    shape = [int(s) for s in image.shape[2:]]
    ndim = len(shape)
    index = world_to_voxel(world, world_to_voxel_matrix)
    normalized = voxel_to_normalized(index, shape).view([1] + list(out_shape) + [ndim])
    if outside == "zeros":
        return sample_normalized(image, normalized, "zeros")
    if outside != "itk":
        raise ValueError(f"sample_at_world_points(): 'outside' must be 'itk' or 'zeros', got {outside!r}")
    values = sample_normalized(image, normalized, "border")
    inside = torch.ones(index.shape[0], dtype=torch.bool, device=index.device)
    for d in range(ndim):
        inside &= (index[:, d] >= -0.5) & (index[:, d] <= shape[d] - 0.5)
    return values * inside.view([1, 1] + list(out_shape)).to(values.dtype)


def sample_at_points(image: torch.Tensor, grid, world: torch.Tensor, out_shape, outside: str = "itk") -> torch.Tensor:
    """:func:`sample_at_world_points` for an image on ``grid`` (an :class:`~itk_odereg.core.grid.ImageGrid`)."""
    matrix = torch.as_tensor(grid.world_to_voxel_matrix_torch_order(), dtype=world.dtype, device=world.device)
    return sample_at_world_points(image, matrix, world, [int(s) for s in out_shape], outside)
