"""Derived grid sizes: the one formula behind pyramid levels, working grids and control grids.

Every grid the engine derives from an image grid is *corner-aligned* with it (same outer voxel
centres); :func:`corner_aligned_level` gives its size and spacing, and
:meth:`ImageGrid.corner_aligned <itk_odereg.core.grid.ImageGrid.corner_aligned>` the grid itself.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["corner_aligned_level"]


def corner_aligned_level(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    factor: float | None = None,
    target_spacing_mm: float | None = None,
    rounding: str = "ceil",
    min_size: int = 2,
    keep_singleton_axes: bool = True,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Size and spacing of a corner-aligned copy of a grid: the one formula every derived grid uses.

    A corner-aligned grid spans the same voxel centres: its first and last centres coincide
    with those of the original along every axis, so linear resampling between the two is
    ``interpolate(..., align_corners=True)`` and exact for linear fields. Along an axis of
    ``n`` voxels of spacing ``h`` (extent ``e = (n - 1) h`` between the outer centres) the
    new size is ``r + 1`` voxels, ``r`` being ``(n - 1) / factor`` or ``e / target_spacing_mm``
    rounded up (``rounding="ceil"``: never coarser than asked) or to the nearest integer
    (``"round"``: the variant the shipped MS-ODENet models were trained with), at least
    ``min_size``; the new spacing is ``e / (size - 1)``.

    Used by the pyramid levels and working grid (factor, ceil, at least 2), the NODEO
    velocity control grid (target spacing, ceil, at least 3, singleton axes included) and the
    MS-ODENet model grid (target spacing, round, at least 8).

    Args:
        shape, spacing_mm: the original grid, any axis order (the result keeps it), mm.
        factor: downsampling factor (>= 1), or
        target_spacing_mm: the wanted spacing in mm (exactly one of the two).
        rounding: ``"ceil"`` or ``"round"``.
        min_size: the fewest voxels per axis.
        keep_singleton_axes: an axis of one voxel stays one voxel (else it gets ``min_size``).

    Returns:
        (size per axis, spacing per axis in mm).
    """
    if (factor is None) == (target_spacing_mm is None):
        raise ValueError("corner_aligned_level(): give exactly one of 'factor' and 'target_spacing_mm'")
    if factor is not None and factor < 1:
        raise ValueError(f"corner_aligned_level(): 'factor' must be >= 1, got {factor}")
    if rounding not in ("ceil", "round"):
        raise ValueError(f"corner_aligned_level(): 'rounding' must be 'ceil' or 'round', got {rounding!r}")
    sizes, spacings = [], []
    for n, h in zip(shape, spacing_mm):
        if n <= 1 and keep_singleton_axes:
            sizes.append(1)
            spacings.append(h)
            continue
        extent = (n - 1) * h
        ratio = (n - 1) / factor if factor is not None else extent / target_spacing_mm
        size = max(min_size, (int(math.ceil(ratio)) if rounding == "ceil" else int(round(ratio))) + 1)
        sizes.append(size)
        fallback = h if factor is not None else target_spacing_mm
        spacings.append(extent / (size - 1) if size > 1 and extent > 0 else fallback)
    return tuple(sizes), tuple(spacings)
