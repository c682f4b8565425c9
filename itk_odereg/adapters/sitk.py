"""SimpleITK adapter: a :class:`Registration` as SimpleITK images and transforms.

Transforms map fixed points to moving points in LPS mm, so that
``sitk.Resample(moving, fixed, forward_transform(reg))`` puts the moving image on the fixed grid.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np
import torch

from .. import transforms as tx
from ..core.image import tensor_to_sitk
from ..registration.result import Registration
from .result import RegistrationResult, build_result

__all__ = ["forward_transform", "inverse_transform", "field_image", "image", "registration_result"]


def image(tensor: Any, reg: Registration, dtype: Any = None) -> Any:
    """A ``[1, 1, *fixed_grid.shape]`` tensor or array as a SimpleITK image on the fixed grid."""
    return tensor_to_sitk(tensor.cpu() if isinstance(tensor, torch.Tensor) else tensor, reg.fixed_grid, dtype=dtype)


def field_image(field_mm: np.ndarray, reg: Registration) -> Any:
    """A float64 ``(*shape, d)`` LPS mm field on the fixed grid as a ``sitkVectorFloat64`` image."""
    return tx.displacement_field_image(field_mm, reg.fixed_grid)


def forward_transform(reg: Registration) -> Any:
    """``sitk.CompositeTransform([affine, warp])``: ``p -> A(p + W(p)) + t``."""
    affine = tx.affine_matrix_to_sitk(reg.affine_matrix, reg.affine_translation)
    return tx.sitk_composite(affine, tx.sitk_displacement_transform(reg.displacement_mm, reg.fixed_grid))


def inverse_transform(reg: Registration) -> Any:
    """``q -> W^-1(A^-1 (q - t))``: SimpleITK applies the last added first, so the inverse warp is added first."""
    import SimpleITK as sitk

    inv_A = np.linalg.inv(reg.affine_matrix)
    composite = sitk.CompositeTransform(reg.ndim)
    composite.AddTransform(tx.sitk_displacement_transform(reg.inverse_displacement_mm, reg.fixed_grid))
    composite.AddTransform(tx.affine_matrix_to_sitk(inv_A, -inv_A @ reg.affine_translation))
    return composite


def registration_result(reg: Registration, warped: torch.Tensor, field_mm: Optional[np.ndarray] = None) -> RegistrationResult:
    """Every output of ``reg`` as SimpleITK objects; ``warped`` is ``reg.warp(moving)``."""
    return build_result(reg, warped, sys.modules[__name__], field_mm)
