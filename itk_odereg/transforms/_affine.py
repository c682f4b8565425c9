"""Affine transforms ``T(p) = A p + t`` (LPS mm) as SimpleITK and ITK transforms, and back; dense displacements of any transform."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.grid import ImageGrid
from ..core.typing import Array, ArrayLike

from ._fields import _as_float64_array


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
