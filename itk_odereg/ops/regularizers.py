"""Gradient regularizers of displacement fields.

All take a displacement ``u`` of shape [N, d, *S] in voxel units, channel i
along spatial dim i (tensor order). First derivatives use central differences
inside the volume and one-sided differences on the border; second derivatives
use the three-point stencil, repeated from the nearest interior sample on the
border. ``spacing`` (mm per voxel, tensor order, e.g. ``(sz, sy, sx)``) makes
the derivatives physical: component i becomes ``h_i * u_i`` mm and a
derivative along j divides by ``h_j``. Energies are means over the batch and
the voxels, returned as 0-dim tensors.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..extension import _HAS_OPS
from . import _checks, _reference

__all__ = ["diffusion_energy", "bending_energy", "jacobian_determinant", "jacobian_penalty"]


def _as_spacing(spacing: Optional[Sequence[float]]) -> Optional[list[float]]:
    return None if spacing is None else [float(s) for s in spacing]


def diffusion_energy(displacement: torch.Tensor, spacing: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Mean over batch and voxels of ``sum_{i,j} (d u_i / d x_j)^2``.

    Args:
        displacement: Tensor[N, d, *S], voxel units, every spatial size >= 2.
        spacing: optional voxel spacing in mm, tensor order. Without it the
            energy is in voxel units; with it, dimensionless (mm/mm).

    Returns:
        0-dim tensor, differentiable with respect to ``displacement``.
    """
    spacing = _as_spacing(spacing)
    if _HAS_OPS:
        return torch.ops.itk_odereg.diffusion_energy.default(displacement, spacing)
    ndim = _checks.check_displacement(displacement, "diffusion_energy", min_size=2)
    _checks.check_spacing(spacing, ndim, "diffusion_energy")
    return _reference.diffusion_energy(displacement, spacing)


def bending_energy(displacement: torch.Tensor, spacing: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Mean over batch and voxels of ``sum_i sum_{a,b} (d^2 u_i / d x_a d x_b)^2``.

    Mixed derivatives (a != b) count twice, as in the thin-plate bending energy.

    Args:
        displacement: Tensor[N, d, *S], voxel units, every spatial size >= 3.
        spacing: optional voxel spacing in mm, tensor order (energy then in 1/mm^2).

    Returns:
        0-dim tensor, differentiable with respect to ``displacement``.
    """
    spacing = _as_spacing(spacing)
    if _HAS_OPS:
        return torch.ops.itk_odereg.bending_energy.default(displacement, spacing)
    ndim = _checks.check_displacement(displacement, "bending_energy", min_size=3)
    _checks.check_spacing(spacing, ndim, "bending_energy")
    return _reference.bending_energy(displacement, spacing)


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of the map ``x -> x + u(x)`` at every voxel.

    ``det(I + Du)`` with ``Du[i, j] = d u_i / d x_j``. It does not depend on the
    voxel spacing (``det(H (I + Du) H^-1) = det(I + Du)`` for diagonal H), so
    there is no spacing argument. Values <= 0 mark folding.

    Args:
        displacement: Tensor[N, d, *S], voxel units, every spatial size >= 2.

    Returns:
        Tensor[N, *S], differentiable with respect to ``displacement``.
    """
    if _HAS_OPS:
        return torch.ops.itk_odereg.jacobian_determinant.default(displacement)
    _checks.check_displacement(displacement, "jacobian_determinant", min_size=2)
    return _reference.jacobian_determinant(displacement)


def jacobian_penalty(displacement: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """NODEO's negative-Jacobian penalty: mean over batch and voxels of ``relu(threshold - det J)^2``.

    Args:
        displacement: Tensor[N, d, *S], voxel units, every spatial size >= 2.
        threshold: determinants below it are penalized (NODEO uses 0.5).

    Returns:
        0-dim tensor, differentiable with respect to ``displacement``.
    """
    if _HAS_OPS:
        return torch.ops.itk_odereg.jacobian_penalty.default(displacement, float(threshold))
    _checks.check_displacement(displacement, "jacobian_penalty", min_size=2)
    return _reference.jacobian_penalty(displacement, float(threshold))


if _HAS_OPS:

    @torch.library.register_fake("itk_odereg::diffusion_energy")
    def _diffusion_fake(displacement, spacing=None):
        ndim = _checks.check_displacement(displacement, "diffusion_energy", min_size=2)
        _checks.check_spacing(spacing, ndim, "diffusion_energy")
        return displacement.new_empty(())

    @torch.library.register_fake("itk_odereg::bending_energy")
    def _bending_fake(displacement, spacing=None):
        ndim = _checks.check_displacement(displacement, "bending_energy", min_size=3)
        _checks.check_spacing(spacing, ndim, "bending_energy")
        return displacement.new_empty(())

    @torch.library.register_fake("itk_odereg::jacobian_determinant")
    def _jacobian_determinant_fake(displacement):
        _checks.check_displacement(displacement, "jacobian_determinant", min_size=2)
        return displacement.new_empty((displacement.shape[0], *displacement.shape[2:]))

    @torch.library.register_fake("itk_odereg::jacobian_penalty")
    def _jacobian_penalty_fake(displacement, threshold=0.5):
        _checks.check_displacement(displacement, "jacobian_penalty", min_size=2)
        return displacement.new_empty(())

    def _grad_like_displacement(grad_output, displacement, *args):
        return torch.empty_like(displacement, memory_format=torch.contiguous_format)

    for _name in ("_diffusion_energy_backward", "_bending_energy_backward", "_jacobian_determinant_backward",
                  "_jacobian_penalty_backward"):
        torch.library.register_fake(f"itk_odereg::{_name}")(_grad_like_displacement)
