"""Grids, resizing and rigid motions of the MS-ODENet models (TorchScript)."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


def level_shape(shape: List[int], factor: int) -> List[int]:
    """Corner-aligned pyramid level: (S - 1) / factor + 1 samples per axis (at least 2)."""
    return [max(2, (s - 1) // factor + 1) for s in shape]


def resize(field: torch.Tensor, shape: List[int]) -> torch.Tensor:
    """Trilinear resampling of [1, C, *S] onto a corner-aligned grid of another size."""
    if list(field.shape[2:]) == shape:
        return field
    return F.interpolate(field, size=shape, mode="trilinear", align_corners=True)


def rescale_displacement(u: torch.Tensor, from_shape: List[int], to_shape: List[int]) -> torch.Tensor:
    """A voxel-unit displacement of one corner-aligned grid, resampled and rescaled onto another."""
    scale = torch.tensor([(t - 1) / max(f - 1, 1) for f, t in zip(from_shape, to_shape)], dtype=u.dtype,
                         device=u.device).view(1, 3, 1, 1, 1)
    return resize(u, to_shape) * scale


def _grid(axes: List[torch.Tensor]) -> torch.Tensor:
    """[3, *S] point grid of three 1D coordinate tensors (tensor axis order, "ij" indexing)."""
    grid = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    return torch.stack([grid[0], grid[1], grid[2]])


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """[K, 3, 3] rotations R0(a) R1(b) R2(c) for ``angles`` [K, 3] = (a, b, c), radians: the
    product of rotations about tensor axes 0, 1 and 2."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(angles[:, 0]), torch.zeros_like(angles[:, 0])
    r0 = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    r1 = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    r2 = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return r0 @ r1 @ r2


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """[3, 3] rotation, the product of rotations about tensor axes 0, 1 and 2 by ``angles`` (radians)."""
    return rotation_matrices(angles[None])[0]


def rotation_angles(matrix: torch.Tensor) -> torch.Tensor:
    """The angles [3] (radians, the middle one in [-pi/2, pi/2]) of :func:`rotation_matrix`."""
    b = torch.asin(matrix[0, 2].clamp(-1.0, 1.0))
    c = torch.atan2(-matrix[0, 1], matrix[0, 0])
    a = torch.atan2(-matrix[1, 2], matrix[2, 2])
    return torch.stack([a, b, c])


def rigid_parameter_rate(params: torch.Tensor, body_rate: torch.Tensor) -> torch.Tensor:
    """d(params)/dt [1, 6] of the motion p -> R p + t for a rate given in the warped image's frame.

    ``body_rate`` [1, 6] = (omega, v) asks that the image warped by the current
    motion be sampled at p + omega x p + v (omega in radians, v in finest-grid
    voxels, p about the grid centre), i.e. dR/dt = R [omega]x and dt/dt = R v.
    The rotation is applied in that frame because the forces and the networks
    see the warped image: adding omega to the angles directly is right only
    near the identity, and at 75 degrees it would turn the wrong way.
    """
    angles = params[0, :3]
    zero = torch.zeros_like(angles[0])
    r1 = rotation_matrix(torch.stack([zero, angles[1], zero]))
    r2 = rotation_matrix(torch.stack([zero, zero, angles[2]]))
    # Columns: the body-frame angular velocity of a unit rate of each angle.
    e2 = torch.zeros_like(angles)
    e2[2] = 1.0
    euler = torch.stack([(r2.t() @ r1.t())[:, 0], r2.t()[:, 1], e2], 1)
    # Damped least squares: near gimbal lock (b = +-90 degrees) the angle rates are undetermined.
    normal = euler.t() @ euler + 1e-6 * torch.eye(3, dtype=params.dtype, device=params.device)
    angle_rate = torch.linalg.solve(normal, euler.t() @ body_rate[0, :3, None])[:, 0]
    shift_rate = rotation_matrix(angles) @ body_rate[0, 3:]
    return torch.cat([angle_rate, shift_rate])[None]


def _centred_points(shape: List[int], reference_shape: List[int], like: torch.Tensor) -> torch.Tensor:
    """[3, N] positions of a grid's voxels in voxels of the corner-aligned ``reference_shape``, about the centre."""
    scale = [(s - 1) / max(r - 1, 1) for s, r in zip(shape, reference_shape)]
    axes = [(torch.arange(s, dtype=like.dtype, device=like.device) - (s - 1) / 2.0) / scale[i]
            for i, s in enumerate(shape)]
    return _grid(axes).reshape(3, -1)


def rigid_displacement(params: torch.Tensor, shape: List[int], reference_shape: List[int]) -> torch.Tensor:
    """Displacement [1, 3, *shape] (voxel units of ``shape``) of a rigid motion about the grid centre.

    Args:
        params: [1, 6]: three rotation angles (radians, about tensor axes 0, 1, 2)
            and a translation in voxels of ``reference_shape`` (the finest grid).
        shape: the grid to evaluate on (corner-aligned with ``reference_shape``).
        reference_shape: the grid whose voxels the translation is expressed in.
    """
    scale = [(s - 1) / max(r - 1, 1) for s, r in zip(shape, reference_shape)]
    # Positions in reference voxels, centred, so the motion is the same on every level.
    points = _centred_points(shape, reference_shape, params)
    moved = rotation_matrix(params[0, :3]) @ points + params[0, 3:].view(3, 1)
    scale_t = torch.tensor(scale, dtype=params.dtype, device=params.device).view(3, 1)
    return ((moved - points) * scale_t).reshape(1, 3, shape[0], shape[1], shape[2])
