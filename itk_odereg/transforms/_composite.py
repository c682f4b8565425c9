"""Composites ``[affine, warp]`` (``p -> A(W(p))``; the last added acts first) for SimpleITK and ITK."""
from __future__ import annotations

from typing import Any



from ._fields import sitk_displacement_transform
from ._affine import affine_matrix_to_itk, to_sitk_affine


# ---------------------------------------------------------------------------- composites


def sitk_composite(affine: Any, displacement: Any) -> Any:
    """``sitk.CompositeTransform([affine, warp])``: ``p -> A(W(p))``, the warp acts first.

    This is the ITK form of "affine pre-alignment, then deformable": the
    deformable field ``W`` is defined on the fixed grid and sends fixed points to
    the affinely aligned space, which ``A`` maps to the moving image. SimpleITK
    (like ITK) applies the last transform of the list first; verified by
    ``tests/test_transforms.py``.

    Args:
        affine: a SimpleITK transform (any affine kind, used as it is), an (A, t)
            pair (``p -> A p + t``), or None (identity).
        displacement: a ``sitk.DisplacementFieldTransform`` or a SimpleITK vector
            image (copied, so it stays intact).

    Raises:
        TypeError: for other argument types.
        ValueError: if the dimensions differ.

    Returns:
        sitk.CompositeTransform.
    """
    import SimpleITK as sitk

    if isinstance(displacement, sitk.Image):
        warp = sitk_displacement_transform(displacement)
    elif isinstance(displacement, sitk.Transform):
        warp = displacement
    else:
        raise TypeError(
            "sitk_composite(): 'displacement' must be a sitk.DisplacementFieldTransform or a SimpleITK vector image, "
            f"got {type(displacement).__name__}"
        )
    d = warp.GetDimension()
    if isinstance(affine, sitk.Transform):
        aff = affine  # kept as it is (Euler, similarity, ...)
    else:
        aff = to_sitk_affine(affine, d, "sitk_composite()")
    if aff.GetDimension() != d:
        raise ValueError(f"sitk_composite(): 'affine' is {aff.GetDimension()}D but 'displacement' is {d}D")
    return sitk.CompositeTransform([aff, warp])


def itk_composite(affine: Any, displacement: Any) -> Any:
    """``itk.CompositeTransform[itk.D, d]`` with ``AddTransform(affine)`` then ``AddTransform(warp)``: ``p -> A(W(p))``.

    ITK's CompositeTransform is a stack: the transform added last is applied
    first (checked in ``tests/test_transforms.py``), exactly as SimpleITK.

    Args:
        affine: an ITK transform (e.g. from :func:`affine_matrix_to_itk`) or an (A, t) pair.
        displacement: an ``itk.DisplacementFieldTransform`` (e.g. from
            :func:`itk_displacement_transform`).

    Returns:
        itk.CompositeTransform[itk.D, d].
    """
    import itk

    if isinstance(affine, (tuple, list)) and len(affine) == 2:
        affine = affine_matrix_to_itk(affine[0], affine[1])
    d = int(displacement.GetInputSpaceDimension())
    comp = itk.CompositeTransform[itk.D, d].New()
    comp.AddTransform(affine)
    comp.AddTransform(displacement)
    return comp
