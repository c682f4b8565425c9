"""What :func:`itk_odereg.register` returns: the engine's answer converted to the caller's toolkit."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional

import numpy as np
import torch

from ..core.grid import ImageGrid
from ..registration.result import Registration

__all__ = ["RegistrationResult", "build_result"]


@dataclass
class RegistrationResult:
    """A registration in the caller's image type (SimpleITK for file paths).

    Attributes:
        warped: the moving image resampled onto the fixed grid (linear).
        transform: fixed -> moving points (LPS mm): composite [affine, displacement field].
        inverse_transform: moving -> fixed points: composite [inverse field, inverse affine].
        displacement_field: vector image on the fixed grid, mm, components (x, y, z):
            T(p) - p for the whole map, affine included.
        inverse_displacement_field: vector image on the fixed grid, mm: the
            deformable part's inverse (used by ``inverse_transform``).
        jacobian_determinant: det(I + Du) of the deformable part on the fixed grid
            (the affine's determinant is the constant ``affine_determinant``).
        affine_matrix, affine_translation: T_affine(p) = A p + t, LPS mm.
        loss_history: per-iteration records of both stages.
        timings: wall seconds per stage.
        folding_percent: % of fixed voxels with det J <= 0.
        registration: the toolkit-neutral :class:`Registration` all of these were made from.
    """

    warped: Any
    transform: Any
    inverse_transform: Any
    displacement_field: Any
    inverse_displacement_field: Any
    jacobian_determinant: Any
    affine_matrix: np.ndarray
    affine_translation: np.ndarray
    loss_history: list
    timings: dict
    folding_percent: float
    registration: Registration = field(repr=False, default=None)

    @property
    def affine_determinant(self) -> float:
        return float(np.linalg.det(self.affine_matrix))

    @property
    def fixed_grid(self) -> ImageGrid:
        return self.registration.fixed_grid

    @property
    def deformable_field_mm(self) -> np.ndarray:
        """The deformable part on the fixed grid, float64 (z, y, x, 3), LPS mm (x, y, z)."""
        return self.registration.displacement_mm

    @property
    def inverse_field_mm(self) -> np.ndarray:
        return self.registration.inverse_displacement_mm


def build_result(reg: Registration, warped: torch.Tensor, adapter: ModuleType,
                 field_mm: Optional[np.ndarray] = None) -> RegistrationResult:
    """Every output of ``reg`` in the toolkit of ``adapter`` (:mod:`.sitk` or :mod:`.itk`).

    ``warped`` is ``reg.warp(moving)``; ``field_mm`` is ``reg.field_mm()`` when the caller has it.
    """
    field_mm = reg.field_mm() if field_mm is None else field_mm
    return RegistrationResult(
        warped=adapter.image(warped, reg),
        transform=adapter.forward_transform(reg),
        inverse_transform=adapter.inverse_transform(reg),
        displacement_field=adapter.field_image(field_mm, reg),
        inverse_displacement_field=adapter.field_image(reg.inverse_displacement_mm, reg),
        jacobian_determinant=adapter.image(torch.from_numpy(reg.jacobian_determinant)[None, None], reg),
        affine_matrix=np.array(reg.affine_matrix),
        affine_translation=np.array(reg.affine_translation),
        loss_history=list(reg.loss_history),
        timings=dict(reg.timings),
        folding_percent=reg.folding_percent,
        registration=reg,
    )
