"""ITK adapter: a :class:`Registration` as ITK Python images and transforms (``itk.CompositeTransform[itk.D, d]``).

Transforms map fixed points to moving points in LPS mm, so that
``itk.resample_image_filter(moving, transform=forward_transform(reg), ...)`` on the fixed grid
puts the moving image there.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np
import torch

from .. import transforms as tx
from ..core.image import tensor_to_itk
from ..registration.result import Registration
from .result import RegistrationResult, build_result

__all__ = ["forward_transform", "inverse_transform", "field_image", "image", "registration_result"]


def image(tensor: Any, reg: Registration, dtype: Any = None) -> Any:
    """A ``[1, 1, *fixed_grid.shape]`` tensor or array as an ITK image on the fixed grid."""
    return tensor_to_itk(tensor.cpu() if isinstance(tensor, torch.Tensor) else tensor, reg.fixed_grid, dtype=dtype)


def field_image(field_mm: np.ndarray, reg: Registration) -> Any:
    """A float64 ``(*shape, d)`` LPS mm field on the fixed grid as an ``itk.Image[itk.Vector[itk.D, d], d]``."""
    return tx.displacement_field_itk_image(field_mm, reg.fixed_grid)


def forward_transform(reg: Registration) -> Any:
    """``[affine, warp]``: ``p -> A(p + W(p)) + t`` (ITK applies the last added first)."""
    return tx.itk_composite((reg.affine_matrix, reg.affine_translation),
                            tx.itk_displacement_transform(reg.displacement_mm, reg.fixed_grid))


def inverse_transform(reg: Registration) -> Any:
    """``q -> W^-1(A^-1 (q - t))``: the inverse warp is added first, so it acts last."""
    import itk

    inv_A = np.linalg.inv(reg.affine_matrix)
    composite = itk.CompositeTransform[itk.D, reg.ndim].New()
    composite.AddTransform(tx.itk_displacement_transform(reg.inverse_displacement_mm, reg.fixed_grid))
    composite.AddTransform(tx.affine_matrix_to_itk(inv_A, -inv_A @ reg.affine_translation))
    return composite


def registration_result(reg: Registration, warped: torch.Tensor, field_mm: Optional[np.ndarray] = None) -> RegistrationResult:
    """Every output of ``reg`` as ITK objects; ``warped`` is ``reg.warp(moving)``."""
    return build_result(reg, warped, sys.modules[__name__], field_mm)
