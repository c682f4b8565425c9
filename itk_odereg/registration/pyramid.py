"""Corner-aligned image pyramids on one physical box.

Every level spans the same box: its first and last voxel centres coincide with
those of the full-resolution grid along each axis. Level ``f`` of an axis with
``S`` voxels of spacing ``h`` has ``ceil((S - 1) / f) + 1`` voxels of spacing
``(S - 1) h / (S_f - 1)``. With that layout, linear resampling between levels
is ``interpolate(..., align_corners=True)`` and exact for linear fields, so
fields computed at one level carry over to the next without drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import ops
from ..core.levels import axis_factors, corner_aligned_level
from ..core.separable import apply_separable, compose, gaussian_matrices, resampling_matrices

__all__ = ["PyramidLevel", "pyramid_level", "resample_to_shape", "downsample_image"]


@dataclass(frozen=True)
class PyramidLevel:
    """One level: ``shape`` and ``spacing_mm`` per tensor axis, and its factor relative to full size."""

    factor: float
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]


def pyramid_level(shape: Sequence[int], spacing_mm: Sequence[float], factor: float) -> PyramidLevel:
    """The corner-aligned level of a grid downsampled by ``factor`` (>= 1) relative to its finest axis.

    Per axis (:func:`~itk_odereg.core.levels.axis_factors`): an axis coarser than
    ``factor * min(spacing_mm)`` is shrunk less or not at all, so thick slices stay thick
    instead of growing ``factor`` times thicker.
    """
    if factor < 1:
        raise ValueError(f"pyramid_level(): 'factor' must be >= 1, got {factor}")
    new_shape, new_spacing = corner_aligned_level(shape, spacing_mm, factor=axis_factors(spacing_mm, factor))
    return PyramidLevel(float(factor), new_shape, new_spacing)


def resample_to_shape(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Linear resampling of [N, C, *S] to another corner-aligned level of the same box
    (``ops.resample_linear``: two taps per axis); ``field`` itself when the size is unchanged."""
    if tuple(field.shape[2:]) == tuple(int(s) for s in shape):
        return field
    return ops.resample_linear(field, shape)


def downsample_image(image: torch.Tensor, spacing_mm: Sequence[float], level: PyramidLevel) -> torch.Tensor:
    """Anti-aliased image at a pyramid level: Gaussian blur, then corner-aligned resampling.

    The blur's standard deviation is half the level's spacing ratio, in
    full-resolution voxels, per axis (the usual choice of ITK's and ANTs' pyramids).
    """
    sigma = [0.5 * (hl / h) if hl / h > 1.0 + 1e-6 else 0.0 for h, hl in zip(spacing_mm, level.spacing_mm)]
    blur = gaussian_matrices(image.shape[2:], sigma, image.dtype, image.device)
    resample = resampling_matrices(image.shape[2:], level.shape, image.dtype, image.device)
    return apply_separable(image, compose(resample, blur))
