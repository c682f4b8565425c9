"""Derived grid sizes: the one formula behind pyramid levels, working grids and control grids.

Every grid the engine derives from an image grid is *corner-aligned* with it (same outer voxel
centres); :func:`corner_aligned_level` gives its size and spacing, and
:meth:`ImageGrid.corner_aligned <itk_odereg.core.grid.ImageGrid.corner_aligned>` the grid itself.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["corner_aligned_level", "axis_factors"]


def axis_factors(spacing_mm: Sequence[float], factor: float) -> tuple[float, ...]:
    """Per-axis downsampling factors of a level ``factor`` times coarser than the *finest* axis.

    The level's target spacing is ``factor * min(spacing)``; an axis already coarser than that is
    shrunk less, or not at all: ``f_a = max(1, factor * min(spacing) / spacing_a)``, as ANTs
    adapts its shrink factors to anisotropic images. A thick-slice volume (0.5 x 0.5 x 5 mm) at
    factor 4 becomes 2 x 2 x 5 mm, not 2 x 2 x 20 mm. Axes at the finest spacing get ``factor``
    exactly, so isotropic grids are unchanged by the rule.
    """
    finest = min(spacing_mm)
    return tuple(float(factor) if h == finest else max(1.0, factor * finest / h) for h in spacing_mm)


def corner_aligned_level(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    factor: float | Sequence[float] | None = None,
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
        factor: downsampling factor (>= 1), one for all axes or one per axis (:func:`axis_factors`), or
        target_spacing_mm: the wanted spacing in mm (exactly one of the two).
        rounding: ``"ceil"`` or ``"round"``.
        min_size: the fewest voxels per axis.
        keep_singleton_axes: an axis of one voxel stays one voxel (else it gets ``min_size``).

    Returns:
        (size per axis, spacing per axis in mm).
    """
    if (factor is None) == (target_spacing_mm is None):
        raise ValueError("corner_aligned_level(): give exactly one of 'factor' and 'target_spacing_mm'")
    factors = None
    if factor is not None:
        try:
            factors = [float(f) for f in factor]
        except TypeError:   # one number for every axis
            factors = [float(factor)] * len(shape)
        if len(factors) != len(shape) or min(factors) < 1:
            raise ValueError(f"corner_aligned_level(): 'factor' must be >= 1 (one, or one per axis), got {factor}")
    if rounding not in ("ceil", "round"):
        raise ValueError(f"corner_aligned_level(): 'rounding' must be 'ceil' or 'round', got {rounding!r}")
    sizes, spacings = [], []
    for axis, (n, h) in enumerate(zip(shape, spacing_mm)):
        if n <= 1 and keep_singleton_axes:
            sizes.append(1)
            spacings.append(h)
            continue
        extent = (n - 1) * h
        ratio = (n - 1) / factors[axis] if factors is not None else extent / target_spacing_mm
        size = max(min_size, (int(math.ceil(ratio)) if rounding == "ceil" else int(round(ratio))) + 1)
        sizes.append(size)
        fallback = h if factor is not None else target_spacing_mm
        spacings.append(extent / (size - 1) if size > 1 and extent > 0 else fallback)
    return tuple(sizes), tuple(spacings)
