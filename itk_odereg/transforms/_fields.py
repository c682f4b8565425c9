"""Displacement fields: voxel units to LPS millimetres and back, and their SimpleITK and ITK images and transforms."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.grid import ImageGrid
from ..core.typing import Array, ArrayLike, TensorOrArray


# ---------------------------------------------------------------------------- voxel <-> physical


def _as_float64_array(x: TensorOrArray | ArrayLike, caller: str, name: str) -> Array:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{caller}: '{name}' must be a numeric tensor or array, got {type(x).__name__}") from err


def _check_field(field: TensorOrArray, grid: ImageGrid, caller: str) -> Array:
    f = _as_float64_array(field, caller, "field")
    expected = grid.shape + (grid.ndim,)
    if f.shape != expected:
        raise ValueError(
            f"{caller}: 'field' must have shape {expected} (torch-order grid shape, then {grid.ndim} physical "
            f"components x, y[, z]), got {f.shape}"
        )
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{caller}: 'field' has non-finite values")
    return f


def voxel_displacement_to_physical(u_vox: TensorOrArray, grid: ImageGrid) -> Array:
    """Convert an ops displacement (voxels, tensor order) to an ITK physical displacement field.

    ``u_phys = direction @ (spacing * u_vox[::-1])`` at every voxel: the
    components are reversed from (z, y, x) to (x, y, z), scaled to mm and
    rotated into LPS. The result is what ``sitk.DisplacementFieldTransform``
    expects: ``T(p) = p + u_phys(p)`` maps the fixed point ``p`` (voxel centre of
    ``grid``) to the moving point, so ``sitk.Resample(moving, fixed, T)`` equals
    ``warp(moving, u_vox)`` when both images share ``grid``.

    Args:
        u_vox: Tensor or array [d, *shape] or [1, d, *shape]; voxel units,
            channel i along tensor dim i ((z, y, x) in 3D); ``shape == grid.shape``.
        grid: the fixed grid the field lives on.

    Returns:
        float64 array (*shape, d): (z, y, x, 3) in 3D, components (x, y, z) in mm.

    Raises:
        ValueError: on a shape that does not match ``grid``.
    """
    caller = "voxel_displacement_to_physical()"
    u = _as_float64_array(u_vox, caller, "u_vox")
    if u.ndim == grid.ndim + 2 and u.shape[0] == 1:
        u = u[0]
    expected = (grid.ndim,) + grid.shape
    if u.shape != expected:
        raise ValueError(
            f"{caller}: 'u_vox' must have shape {expected} or (1, *{expected}) (channels in tensor order, then the "
            f"grid shape), got {tuple(np.shape(u_vox))}"
        )
    u_itk = u[::-1] * grid.spacing.reshape((grid.ndim,) + (1,) * grid.ndim)
    return np.einsum("ij,j...->...i", grid.direction, u_itk)


def physical_displacement_to_voxel(field: TensorOrArray, grid: ImageGrid) -> Array:
    """Inverse of :func:`voxel_displacement_to_physical`: physical field to voxel units, tensor order.

    ``u_vox = (diag(1 / spacing) @ inv(direction) @ u_phys)[::-1]``.

    Args:
        field: array (*shape, d), components (x, y[, z]) in mm, on ``grid``.
        grid: the grid the field lives on.

    Returns:
        float64 array [d, *shape], voxel units, channel i along tensor dim i;
        ``torch.from_numpy(...)[None]`` is ready for :func:`itk_odereg.ops.warp`.

    Raises:
        ValueError: on a shape that does not match ``grid``.
    """
    f = _check_field(field, grid, "physical_displacement_to_voxel()")
    inv = np.linalg.inv(grid.direction) / grid.spacing[:, None]
    u_itk = np.einsum("ij,...j->i...", inv, f)
    return np.ascontiguousarray(u_itk[::-1])


# ---------------------------------------------------------------------------- field images and transforms


def displacement_field_image(field: TensorOrArray, grid: ImageGrid) -> Any:
    """A ``SimpleITK`` displacement-field image (``sitkVectorFloat64``) on ``grid``.

    Args:
        field: array (*shape, d), physical components (x, y[, z]) in mm.
        grid: the fixed grid (geometry of the image).

    Returns:
        SimpleITK.Image, pixel type ``sitkVectorFloat64`` with d components,
        size ``grid.size``; ``sitk.WriteImage`` of it to ``.nii.gz`` gives the
        5D (X, Y, Z, 1, 3) intent-vector NIfTI that ANTs reads.
    """
    import SimpleITK as sitk

    f = _check_field(field, grid, "displacement_field_image()")
    image = sitk.GetImageFromArray(np.ascontiguousarray(f), isVector=True)
    return grid.apply_to_sitk(image)


def displacement_field_itk_image(field: TensorOrArray, grid: ImageGrid) -> Any:
    """An ``itk.Image[itk.Vector[itk.D, d], d]`` displacement field on ``grid``.

    ITK Python cannot build this type with ``itk.image_from_array(..., ttype=...)``
    (``TemplateTypeError``: no wrapped ``ImageDuplicator``), and
    ``is_vector=True`` gives an ``itk.VectorImage`` instead (which
    ``SetDisplacementField`` happens to convert, but other filters do not); so
    the exact type is allocated and filled through ``itk.array_view_from_image``.

    Args:
        field: array (*shape, d), physical components (x, y[, z]) in mm.
        grid: the fixed grid.

    Returns:
        itk.Image[itk.Vector[itk.D, d], d] owning its buffer.
    """
    import itk

    f = _check_field(field, grid, "displacement_field_itk_image()")
    d = grid.ndim
    image = itk.Image[itk.Vector[itk.D, d], d].New()
    region = itk.ImageRegion[d]()
    region.SetSize([int(s) for s in grid.size])
    image.SetRegions(region)
    image.Allocate()
    view = itk.array_view_from_image(image)
    view[...] = f
    del view
    return grid.apply_to_itk(image)


def displacement_field_from_image(image: Any) -> tuple[Array, ImageGrid]:
    """Read a displacement field back from a SimpleITK or ITK vector image.

    Args:
        image: SimpleITK vector image (e.g. ``sitk.ReadImage("1Warp.nii.gz")``)
            or ``itk.Image[itk.Vector[...]]`` / ``itk.VectorImage`` with d
            components in d dimensions.

    Returns:
        (field float64 (*shape, d) components (x, y[, z]) in mm, grid).

    Raises:
        ValueError: if the image is not a d-component vector image in 2D/3D.
    """
    import SimpleITK as sitk

    caller = "displacement_field_from_image()"
    if isinstance(image, sitk.Image):
        grid = ImageGrid.from_sitk(image)
        ncomp = image.GetNumberOfComponentsPerPixel()
        arr = sitk.GetArrayFromImage(image)
    else:
        import itk

        grid = ImageGrid.from_itk(image)
        ncomp = int(image.GetNumberOfComponentsPerPixel())
        arr = itk.array_from_image(image)
    if ncomp != grid.ndim:
        raise ValueError(f"{caller}: 'image' must have {grid.ndim} components per voxel, got {ncomp}")
    return np.asarray(arr, dtype=np.float64).reshape(grid.shape + (grid.ndim,)), grid


def sitk_displacement_transform(field: Any, grid: ImageGrid | None = None) -> Any:
    """A ``sitk.DisplacementFieldTransform`` for a physical displacement field.

    ``DisplacementFieldTransform(image)`` takes over the image's buffer and
    leaves the image empty (size 0); this function always passes a fresh copy,
    so the caller's image stays intact. The field is interpolated linearly and
    is zero outside its grid.

    Args:
        field: array (*shape, d) (physical, mm, (x, y[, z])) together with
            ``grid``, or a SimpleITK vector image (any float vector type; cast to
            ``sitkVectorFloat64``) with ``grid`` None.
        grid: the field's grid when ``field`` is an array.

    Returns:
        sitk.DisplacementFieldTransform mapping fixed point p to p + field(p).

    Raises:
        ValueError: on a missing grid or malformed field.
    """
    import SimpleITK as sitk

    if isinstance(field, sitk.Image):
        if grid is not None and not ImageGrid.from_sitk(field).allclose(grid):
            raise ValueError("sitk_displacement_transform(): 'grid' does not match the field image's geometry")
        if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
            raise ValueError("sitk_displacement_transform(): 'field' image must have one component per dimension")
        # A new image object (copy-on-write buffer): the transform empties it, not the caller's.
        if field.GetPixelID() == sitk.sitkVectorFloat64:
            image = sitk.Image(field)
        else:
            image = sitk.Cast(field, sitk.sitkVectorFloat64)
    else:
        if grid is None:
            raise ValueError("sitk_displacement_transform(): 'grid' is required when 'field' is an array")
        image = displacement_field_image(field, grid)
    return sitk.DisplacementFieldTransform(image)


def itk_displacement_transform(field: Any, grid: ImageGrid | None = None) -> Any:
    """An ``itk.DisplacementFieldTransform[itk.D, d]`` for a physical displacement field.

    Args:
        field: array (*shape, d) (mm, (x, y[, z])) with ``grid``, or an
            ``itk.Image[itk.Vector[itk.D, d], d]`` with ``grid`` None (used as is,
            not copied).
        grid: the field's grid when ``field`` is an array.

    Returns:
        itk.DisplacementFieldTransform[itk.D, d].
    """
    import itk

    if isinstance(field, (np.ndarray, torch.Tensor)):
        if grid is None:
            raise ValueError("itk_displacement_transform(): 'grid' is required when 'field' is an array")
        image = displacement_field_itk_image(field, grid)
    else:
        image = field
    d = int(image.GetImageDimension())
    tx = itk.DisplacementFieldTransform[itk.D, d].New()
    tx.SetDisplacementField(image)
    return tx
