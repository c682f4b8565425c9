"""Physical-space transforms in ITK's convention, and writing them for ITK and SimpleITK (ANTs files: :mod:`itk_odereg.adapters.ants`).

Conventions (``docs/methods.md`` section 3):

* A transform maps a point ``p`` of the **fixed** (output, reference) image to
  the point ``T(p)`` of the **moving** (input) image where it is sampled, in
  physical LPS millimetres, vector components (x, y, z). ``sitk.Resample(moving,
  fixed, T)`` then computes ``out(p) = moving(T(p))``.
* A dense displacement field is stored as float64 array (*shape, d) on the
  fixed grid, i.e. (z, y, x, 3) in 3D, with components (x, y, z) in mm:
  ``T(p) = p + field[p]``.
* The ops' displacements (:mod:`itk_odereg.ops`) are voxel units with
  components in tensor order (z, y, x); the two are related by
  ``u_phys = direction @ (spacing * u_vox[::-1])``
  (:func:`voxel_displacement_to_physical`).
* Composites: ITK and SimpleITK apply the **last added transform first**, so
  "affine, then deformable" (``p -> A(W(p))``) is ``[affine, warp]`` in ITK and
  ``[warp, affine]`` in ANTs transform lists (``fwdtransforms``).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from .core.grid import ImageGrid
from .core.typing import Array, ArrayLike, PathLike, TensorOrArray
from .io_utils import atomic_write

__all__ = [
    "voxel_displacement_to_physical",
    "physical_displacement_to_voxel",
    "displacement_field_image",
    "displacement_field_itk_image",
    "displacement_field_from_image",
    "sitk_displacement_transform",
    "itk_displacement_transform",
    "affine_matrix_to_sitk",
    "affine_matrix_to_itk",
    "affine_from_transform",
    "affine_to_dense_displacement",
    "transform_to_dense_displacement",
    "sitk_composite",
    "itk_composite",
    "to_sitk_affine",
    "write_composite_h5",
    "write_transform",
]



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


# ---------------------------------------------------------------------------- affine


def _check_affine(A: ArrayLike, t: ArrayLike, center: ArrayLike | None, caller: str) -> tuple[Array, Array, Array]:
    a = _as_float64_array(A, caller, "A")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] not in (2, 3):
        raise ValueError(f"{caller}: 'A' must be a 2x2 or 3x3 matrix, got shape {a.shape}")
    d = a.shape[0]
    tt = _as_float64_array(t, caller, "t")
    if tt.shape != (d,):
        raise ValueError(f"{caller}: 't' must have {d} values (mm, x, y[, z]), got shape {tt.shape}")
    c = np.zeros(d) if center is None else _as_float64_array(center, caller, "center")
    if c.shape != (d,):
        raise ValueError(f"{caller}: 'center' must have {d} values (mm, x, y[, z]), got shape {c.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(tt)) and np.all(np.isfinite(c))):
        raise ValueError(f"{caller}: 'A', 't' and 'center' must be finite")
    return a, tt, c


def affine_matrix_to_sitk(A: ArrayLike, t: ArrayLike, center: ArrayLike | None = None) -> Any:
    """A ``sitk.AffineTransform`` for the map ``p -> A @ p + t`` (fixed LPS mm to moving LPS mm).

    ITK stores an affine as ``A (p - c) + c + translation`` with a centre ``c``.
    The *map* here is always ``A p + t``, whatever ``center`` is; ``center``
    only chooses ITK's parametrisation (``translation = t + A c - c``), which
    matters to optimizers and to readers of the parameters, not to the map.

    Args:
        A: (d, d) matrix acting on physical (x, y[, z]) vectors.
        t: (d,) translation in mm.
        center: optional (d,) centre of rotation in mm (ITK ``FixedParameters``);
            default the origin (0, 0[, 0]).

    Returns:
        sitk.AffineTransform(d).
    """
    import SimpleITK as sitk

    a, tt, c = _check_affine(A, t, center, "affine_matrix_to_sitk()")
    d = a.shape[0]
    tx = sitk.AffineTransform(d)
    tx.SetMatrix([float(v) for v in a.ravel()])
    tx.SetCenter([float(v) for v in c])
    tx.SetTranslation([float(v) for v in tt + a @ c - c])
    return tx


def affine_matrix_to_itk(A: ArrayLike, t: ArrayLike, center: ArrayLike | None = None) -> Any:
    """An ``itk.AffineTransform[itk.D, d]`` for ``p -> A @ p + t``; see :func:`affine_matrix_to_sitk`.

    Args:
        A: (d, d) matrix.
        t: (d,) translation in mm.
        center: optional (d,) centre in mm (parametrisation only).

    Returns:
        itk.AffineTransform[itk.D, d].
    """
    import itk

    a, tt, c = _check_affine(A, t, center, "affine_matrix_to_itk()")
    d = a.shape[0]
    tx = itk.AffineTransform[itk.D, d].New()
    tx.SetMatrix(itk.matrix_from_array(np.array(a, dtype=np.float64, order="C")))
    tx.SetCenter([float(v) for v in c])
    tx.SetTranslation([float(v) for v in tt + a @ c - c])
    return tx


def _transform_point(tx: Any, p: Array) -> Array:
    out = tx.TransformPoint([float(v) for v in p])
    return np.array([float(out[i]) for i in range(len(p))])


def affine_from_transform(transform: Any, ndim: int | None = None, *, atol: float = 1e-6) -> tuple[Array, Array]:
    """The plain ``(A, t)`` with ``T(p) = A p + t`` of any affine SimpleITK or ITK transform.

    Works for every linear transform kind (affine, Euler, similarity, versor,
    scale, translation, identity, and composites of them) by evaluating the
    transform at the origin and the unit points. Transforms that report
    ``IsLinear() == False`` (SimpleITK and ITK both have it) are refused, and
    the result is checked on a few other points (spread over +-100 mm).

    Args:
        transform: a SimpleITK transform or ITK transform (anything with
            ``TransformPoint``).
        ndim: dimension; default ``transform.GetDimension()`` (SimpleITK) or
            ``GetInputSpaceDimension()`` (ITK).
        atol: tolerance in mm for the affinity check.

    Returns:
        (A float64 (d, d), t float64 (d,)).

    Raises:
        ValueError: if the transform is not affine (e.g. contains a displacement field).
    """
    if ndim is None:
        ndim = int(transform.GetDimension()) if hasattr(transform, "GetDimension") else int(transform.GetInputSpaceDimension())
    if hasattr(transform, "IsLinear") and not transform.IsLinear():
        raise ValueError(
            f"affine_from_transform(): 'transform' is not affine ({type(transform).__name__}.IsLinear() is False; "
            "e.g. it holds a displacement field)"
        )
    d = ndim
    t = _transform_point(transform, np.zeros(d))
    A = np.stack([_transform_point(transform, e) - t for e in np.eye(d)], axis=1)
    rng = np.random.default_rng(0)
    for p in rng.uniform(-100, 100, size=(4, d)):
        if not np.allclose(_transform_point(transform, p), A @ p + t, rtol=0, atol=atol):
            raise ValueError("affine_from_transform(): 'transform' is not affine (e.g. it holds a displacement field)")
    return A, t


def affine_to_dense_displacement(A: ArrayLike, t: ArrayLike, grid: ImageGrid) -> Array:
    """The physical displacement of ``p -> A p + t`` at every voxel centre of ``grid``.

    Args:
        A: (d, d) matrix.
        t: (d,) translation in mm.
        grid: the fixed grid.

    Returns:
        float64 array (*shape, d): ``A p + t - p`` in mm, components (x, y[, z]).
    """
    a, tt, _ = _check_affine(A, t, None, "affine_to_dense_displacement()")
    if a.shape[0] != grid.ndim:
        raise ValueError(f"affine_to_dense_displacement(): 'A' is {a.shape[0]}D but 'grid' is {grid.ndim}D")
    p = grid.world_points()
    return p @ (a - np.eye(grid.ndim)).T + tt


def transform_to_dense_displacement(transform: Any, grid: ImageGrid) -> Array:
    """Sample any SimpleITK transform as a dense physical displacement on ``grid``.

    Uses ``sitk.TransformToDisplacementField``: ``field[p] = T(p) - p`` at every
    voxel centre ``p``.

    Args:
        transform: a SimpleITK transform (composite allowed) of dimension ``grid.ndim``.
        grid: the fixed grid.

    Returns:
        float64 array (*shape, d), mm, components (x, y[, z]).
    """
    import SimpleITK as sitk

    f = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        [int(s) for s in grid.size],
        [float(v) for v in grid.origin],
        [float(v) for v in grid.spacing],
        [float(v) for v in grid.direction.ravel()],
    )
    return sitk.GetArrayFromImage(f).astype(np.float64).reshape(grid.shape + (grid.ndim,))


def to_sitk_affine(affine: Any, d: int | None, caller: str) -> Any:
    """``affine`` (a SimpleITK transform of any affine kind, an (A, t) pair, or None for the identity
    of dimension ``d``) as a ``sitk.AffineTransform``; errors are labelled with ``caller``."""
    import SimpleITK as sitk

    if affine is None:
        if d is None:
            raise ValueError(f"{caller}: cannot infer the dimension of an identity affine")
        return sitk.AffineTransform(d)
    if isinstance(affine, (tuple, list)) and len(affine) == 2:
        return affine_matrix_to_sitk(affine[0], affine[1])
    if not isinstance(affine, sitk.Transform):
        raise TypeError(f"{caller}: 'affine' must be a SimpleITK transform, an (A, t) pair or None, got {type(affine).__name__}")
    if type(affine) is sitk.AffineTransform:
        return affine
    A, t = affine_from_transform(affine)
    center = None
    if hasattr(affine, "GetCenter"):
        try:
            center = np.asarray(affine.GetCenter(), dtype=np.float64)
        except RuntimeError:
            center = None
    return affine_matrix_to_sitk(A, t, center)


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


# ---------------------------------------------------------------------------- writers


def write_transform(path: PathLike, transform: Any, *, inputs: Sequence[Any] = ()) -> str:
    """Write a SimpleITK or ITK transform atomically; the format follows the extension.

    ``.h5`` / ``.hdf5`` give ITK's HDF5 format (composites and displacement
    fields included), ``.mat`` the MATLAB format ANTs uses for affines, ``.tfm``
    / ``.txt`` ITK's text format (affines only in practice).

    Args:
        path: destination file.
        transform: a SimpleITK transform, or an ITK transform (written with ``itk.transformwrite``).
        inputs: paths that must not be overwritten.

    Returns:
        ``path`` as a str.
    """
    import SimpleITK as sitk

    caller = "write_transform()"
    if isinstance(transform, sitk.Transform):
        return atomic_write(path, lambda tmp: sitk.WriteTransform(transform, tmp), inputs=inputs, caller=caller)
    if hasattr(transform, "TransformPoint") and (type(transform).__module__ or "").startswith("itk"):
        import itk

        return atomic_write(path, lambda tmp: itk.transformwrite([transform], tmp), inputs=inputs, caller=caller)
    raise TypeError(f"{caller}: 'transform' must be a SimpleITK or ITK transform, got {type(transform).__name__}")


def write_composite_h5(path: PathLike, composite: Any, *, inputs: Sequence[Any] = ()) -> str:
    """Write a (composite) transform as ITK HDF5 (``.h5``) atomically.

    The file holds the whole ``CompositeTransform`` (affine and displacement
    field) and is read by ``sitk.ReadTransform``, ``itk.transformread``,
    ``antsApplyTransforms -t file.h5`` and 3D Slicer.

    Args:
        path: destination, must end in ``.h5`` or ``.hdf5``.
        composite: SimpleITK or ITK transform, typically from :func:`sitk_composite`.
        inputs: paths that must not be overwritten.

    Returns:
        ``path`` as a str.

    Raises:
        ValueError: for another extension or an output that is an input.
    """
    p = os.fspath(path)
    if not p.lower().endswith((".h5", ".hdf5")):
        raise ValueError(f"write_composite_h5(): 'path' must end in .h5 or .hdf5, got '{p}'")
    return write_transform(p, composite, inputs=inputs)
