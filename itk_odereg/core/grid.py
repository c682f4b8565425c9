"""Sampling grids of images in physical space, and the coordinate frames on them.

An :class:`ImageGrid` is the geometry of an ITK/SimpleITK image without its
pixels: ``size``, ``spacing``, ``origin`` and ``direction``, with ITK's meaning.
It maps between the coordinate frames listed in :class:`Axes` through
homogeneous float64 matrices, so every conversion between torch voxels and
physical millimetres in itk-odereg happens here, in one place.

Coordinate frames (see :class:`Axes`):

* ``INDEX``: ITK continuous index, components in ITK order (x, y, z). Voxel
  centres sit at the integers 0 .. size-1; the image box is [-0.5, size-0.5].
* ``VOXEL``: the same continuous index with components in tensor order
  (z, y, x). Displacements of :mod:`itk_odereg.ops` live here.
* ``NORMALIZED``: ``torch.nn.functional.grid_sample`` coordinates with
  ``align_corners=True`` (see :data:`ALIGN_CORNERS`), components (x, y, z):
  -1 at the centre of voxel 0, +1 at the centre of voxel size-1.
* ``WORLD``: physical LPS millimetres, components (x, y, z), as ITK's
  ``TransformContinuousIndexToPhysicalPoint``:
  ``world = origin + direction @ (spacing * index)``.

Orders, once more: ``size``, ``spacing``, ``origin`` and the columns of
``direction`` are in ITK order (x, y, z); ``shape`` is in torch order
(z, y, x) and equals ``size[::-1]``.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Sequence

import numpy as np

from .levels import axis_factors, corner_aligned_level
from .typing import Array, ArrayLike, ScalarOrTuple, Shape, Size

__all__ = ["ALIGN_CORNERS", "Axes", "ImageGrid"]

#: Normalized coordinates follow ``align_corners=True``: -1 and +1 are the
#: *centres* of the first and last voxels (not the outer edges of the image
#: box). This matches the ops (:func:`itk_odereg.ops.warp` equals
#: ``grid_sample(..., align_corners=True)``) and ITK, whose index i is the centre
#: of voxel i. With it, a voxel displacement u maps to a normalized one by the
#: plain scale ``2 / (size - 1)`` per axis, with no half-voxel offsets.
ALIGN_CORNERS = True


class Axes(str, enum.Enum):
    """Coordinate frames of an :class:`ImageGrid`.

    Attributes:
        INDEX: ITK continuous index, components (x, y, z); voxel i's centre is
            at i, the image box is [-0.5, size - 0.5] along each axis.
        VOXEL: continuous index in tensor order, components (z, y, x). This is
            the frame of tensor positions and of the voxel-unit displacements
            of :mod:`itk_odereg.ops`.
        NORMALIZED: ``grid_sample`` coordinates with ``align_corners=True``,
            components (x, y, z): -1 / +1 at the centres of the first / last
            voxels. For an axis of size 1 the voxel sits at 0 and the scale is
            taken as 1, so the map stays invertible.
        WORLD: physical coordinates in millimetres, LPS, components (x, y, z):
            ``origin + direction @ (spacing * index)``.
    """

    INDEX = "index"
    VOXEL = "voxel"
    NORMALIZED = "normalized"
    WORLD = "world"


def _caller_error(caller: str, message: str) -> ValueError:
    return ValueError(f"{caller} {message}")


def _as_float_vector(value: Any, name: str, ndim: int, caller: str) -> Array:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.shape != (ndim,):
        raise _caller_error(caller, f"'{name}' must have {ndim} values (one per axis, ITK order x, y[, z]), got {np.asarray(value).tolist()!r}")
    if not np.all(np.isfinite(arr)):
        raise _caller_error(caller, f"'{name}' must be finite, got {arr.tolist()!r}")
    return arr


def _readonly(arr: Array) -> Array:
    # "+ 0.0" turns -0.0 into 0.0, so that equal grids hash equally (SimpleITK often reports -0.0 cosines)
    arr = np.array(arr, dtype=np.float64, copy=True) + 0.0
    arr.setflags(write=False)
    return arr


class ImageGrid:
    """Geometry of a 2D or 3D image: where every voxel centre lies in physical space.

    Immutable and hashable; two grids compare equal when every attribute is
    exactly equal (use :meth:`allclose` for a tolerance).

    Args:
        size: number of voxels per axis, ITK order (x, y[, z]); 2 or 3 positive integers.
        spacing: voxel size in mm per axis, ITK order; one number or one per axis
            (default 1). Must be positive.
        origin: physical LPS position in mm of the centre of voxel index 0, ITK
            order (default 0).
        direction: d x d matrix whose columns are the physical directions of the
            index axes x, y[, z] (as ITK's ``GetDirection``); a nested sequence,
            an array, or the flat row-major tuple SimpleITK returns. Default
            identity. Must be invertible (ITK's own requirement); it need not be
            orthonormal.

    Attributes:
        size: tuple of int, ITK order (x, y[, z]).
        shape: tuple of int, torch order (z, y, x) = ``size[::-1]``.
        spacing: float64 array (d,), mm, ITK order (a copy: the grid cannot be changed).
        origin: float64 array (d,), mm LPS (a copy).
        direction: float64 array (d, d), columns = axis directions (a copy).
        ndim: 2 or 3.

    Raises:
        ValueError: ``"ImageGrid() 'spacing' must be positive, got ..."`` and
            similar messages for every malformed argument.
    """

    __slots__ = ("_size", "_spacing", "_origin", "_direction", "_hash")

    def __init__(
        self,
        size: Sequence[int],
        spacing: ScalarOrTuple | None = None,
        origin: ScalarOrTuple | None = None,
        direction: ArrayLike | None = None,
    ) -> None:
        caller = "ImageGrid()"
        size_arr = np.asarray(size)
        if size_arr.ndim != 1 or size_arr.shape[0] not in (2, 3):
            raise _caller_error(caller, f"'size' must be a sequence of 2 or 3 integers (ITK order x, y[, z]), got {size!r}")
        if size_arr.dtype.kind == "f" and not np.all(np.mod(size_arr, 1) == 0):
            raise _caller_error(caller, f"'size' must contain integers, got {size!r}")
        if size_arr.dtype.kind not in "iuf":
            raise _caller_error(caller, f"'size' must contain integers, got {size!r}")
        size_t = tuple(int(s) for s in size_arr)
        if any(s <= 0 for s in size_t):
            raise _caller_error(caller, f"'size' must be positive, got {size_t!r}")
        d = len(size_t)
        spacing_arr = _as_float_vector(1.0 if spacing is None else spacing, "spacing", d, caller)
        if np.any(spacing_arr <= 0):
            raise _caller_error(caller, f"'spacing' must be positive, got {spacing_arr.tolist()!r}")
        origin_arr = _as_float_vector(0.0 if origin is None else origin, "origin", d, caller)
        if direction is None:
            direction_arr = np.eye(d)
        else:
            direction_arr = np.asarray(direction, dtype=np.float64)
            if direction_arr.shape == (d * d,):
                direction_arr = direction_arr.reshape(d, d)
            if direction_arr.shape != (d, d):
                raise _caller_error(caller, f"'direction' must be a {d}x{d} matrix (or {d * d} values, row-major), got shape {direction_arr.shape}")
            if not np.all(np.isfinite(direction_arr)):
                raise _caller_error(caller, f"'direction' must be finite, got {direction_arr.tolist()!r}")
            if abs(np.linalg.det(direction_arr)) < 1e-6:
                raise _caller_error(caller, f"'direction' must be invertible, got {direction_arr.tolist()!r}")
        spacing_arr, origin_arr, direction_arr = _readonly(spacing_arr), _readonly(origin_arr), _readonly(direction_arr)
        object.__setattr__(self, "_size", size_t)
        object.__setattr__(self, "_spacing", spacing_arr)
        object.__setattr__(self, "_origin", origin_arr)
        object.__setattr__(self, "_direction", direction_arr)
        object.__setattr__(
            self,
            "_hash",
            hash((size_t, spacing_arr.tobytes(), origin_arr.tobytes(), direction_arr.tobytes())),
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ImageGrid is immutable: cannot set {name!r}")

    # ------------------------------------------------------------------ attributes

    @property
    def size(self) -> Size:
        """Number of voxels per axis, ITK order (x, y[, z])."""
        return self._size

    @property
    def shape(self) -> Shape:
        """Spatial tensor shape, torch order (z, y, x) in 3D, (y, x) in 2D."""
        return self._size[::-1]

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self._size)

    @property
    def numel(self) -> int:
        """Number of voxels."""
        return int(math.prod(self._size))

    @property
    def spacing(self) -> Array:
        """Voxel size in mm, ITK order (x, y[, z]); float64 (d,). A fresh copy on every access."""
        return self._spacing.copy()

    @property
    def origin(self) -> Array:
        """Physical LPS position (mm) of the centre of voxel index 0; float64 (d,). A fresh copy on every access."""
        return self._origin.copy()

    @property
    def direction(self) -> Array:
        """Direction cosines, float64 (d, d): column j is the physical direction of index axis j (x, y, z).

        A fresh writable copy on every access (the grid stays immutable). Writable on
        purpose: ``itk.matrix_from_array`` crashes the interpreter (segfault, ITK 5.4)
        when given a read-only array.
        """
        return self._direction.copy()

    @property
    def physical_extent(self) -> Array:
        """Side lengths in mm of the image box along the index axes x, y[, z]: ``size * spacing``.

        The box runs from the outer edge of the first voxel to the outer edge of
        the last one (index -0.5 to size - 0.5), as in ITK.
        """
        return np.asarray(self._size, dtype=np.float64) * self._spacing

    @property
    def center(self) -> Array:
        """Physical LPS position (mm, x, y[, z]) of the centre of the image box: index ``(size - 1) / 2``."""
        return self.transform_points((np.asarray(self._size, dtype=np.float64) - 1.0) / 2.0, Axes.INDEX, Axes.WORLD)

    def corners(self) -> Array:
        """Physical positions of the 2^d corners of the image box (outer voxel edges).

        Returns:
            float64 array (2^d, d), mm LPS, components (x, y[, z]); corner k has
            index -0.5 or size - 0.5 along axis j according to bit j of k.
        """
        d = self.ndim
        lo = -0.5 * np.ones(d)
        hi = np.asarray(self._size, dtype=np.float64) - 0.5
        idx = np.array([[hi[j] if (k >> j) & 1 else lo[j] for j in range(d)] for k in range(2**d)])
        return self.transform_points(idx, Axes.INDEX, Axes.WORLD)

    # ------------------------------------------------------------------ comparison

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageGrid):
            return NotImplemented
        return (
            self._size == other._size
            and np.array_equal(self._spacing, other._spacing)
            and np.array_equal(self._origin, other._origin)
            and np.array_equal(self._direction, other._direction)
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        return (ImageGrid, (self._size, self._spacing.copy(), self._origin.copy(), self._direction.copy()))

    def allclose(self, other: ImageGrid, *, atol: float = 1e-6) -> bool:
        """Whether ``other`` has the same size and geometry up to ``atol``.

        Args:
            other: the grid to compare with.
            atol: absolute tolerance for spacing and origin (mm) and for the direction cosines.

        Returns:
            True when sizes are equal and spacing, origin and direction agree within ``atol``.
        """
        return (
            self._size == other._size
            and np.allclose(self._spacing, other._spacing, rtol=0, atol=atol)
            and np.allclose(self._origin, other._origin, rtol=0, atol=atol)
            and np.allclose(self._direction, other._direction, rtol=0, atol=atol)
        )

    def __repr__(self) -> str:
        def fmt(a: Array) -> str:
            return "(" + ", ".join(f"{v:.6g}" for v in np.ravel(a)) + ")"

        return (
            f"ImageGrid(size={self._size}, spacing={fmt(self._spacing)}, origin={fmt(self._origin)}, "
            f"direction={fmt(self._direction)})"
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_sitk(cls, image: Any) -> ImageGrid:
        """The grid of a ``SimpleITK.Image`` (its size, spacing, origin and direction).

        Args:
            image: a 2D or 3D ``SimpleITK.Image``.

        Returns:
            ImageGrid with ITK's geometry; tensor index ``[k, j, i]`` of
            ``sitk.GetArrayFromImage(image)`` is ITK index ``(i, j, k)``.

        Raises:
            TypeError: if ``image`` is not a ``SimpleITK.Image``.
            ValueError: if it is not 2D or 3D or its geometry is invalid.
        """
        import SimpleITK as sitk

        if not isinstance(image, sitk.Image):
            raise TypeError(f"ImageGrid.from_sitk() 'image' must be a SimpleITK.Image, got {type(image).__name__}")
        d = image.GetDimension()
        if d not in (2, 3):
            raise ValueError(f"ImageGrid.from_sitk() 'image' must be 2D or 3D, got {d}D")
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (d, d)))

    @classmethod
    def from_itk(cls, image: Any) -> ImageGrid:
        """The grid of an ``itk.Image`` (its buffered region and geometry).

        ITK images may have a largest possible region whose start index is not
        zero (e.g. after region extraction). The grid returned always starts at
        index 0: its origin is ITK's physical position of the region's first
        voxel, so tensor index 0 (``itk.array_from_image``) is grid index 0.

        Args:
            image: a 2D or 3D ``itk.Image`` or ``itk.VectorImage``.

        Returns:
            ImageGrid of the largest possible region.

        Raises:
            TypeError: if ``image`` is not an ITK image.
            ValueError: if it is not 2D or 3D or its geometry is invalid.
        """
        import itk

        if not hasattr(image, "GetLargestPossibleRegion") or not hasattr(image, "GetDirection"):
            raise TypeError(f"ImageGrid.from_itk() 'image' must be an itk.Image, got {type(image).__name__}")
        d = int(image.GetImageDimension())
        if d not in (2, 3):
            raise ValueError(f"ImageGrid.from_itk() 'image' must be 2D or 3D, got {d}D")
        region = image.GetLargestPossibleRegion()
        size = [int(region.GetSize()[i]) for i in range(d)]
        start = np.array([int(region.GetIndex()[i]) for i in range(d)], dtype=np.float64)
        spacing = np.array([float(image.GetSpacing()[i]) for i in range(d)])
        origin = np.array([float(image.GetOrigin()[i]) for i in range(d)])
        direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
        origin = origin + direction @ (spacing * start)
        return cls(size, spacing, origin, direction)

    def to_sitk_reference(self, pixel_type: int | None = None) -> Any:
        """A zero-filled ``SimpleITK.Image`` with this geometry (a reference for ``sitk.Resample``).

        Args:
            pixel_type: a SimpleITK pixel ID (default ``sitk.sitkFloat32``).

        Returns:
            SimpleITK.Image of size ``self.size`` with this spacing, origin and direction.
        """
        import SimpleITK as sitk

        image = sitk.Image([int(s) for s in self._size], sitk.sitkFloat32 if pixel_type is None else pixel_type)
        self.apply_to_sitk(image)
        return image

    def to_itk_reference(self) -> Any:
        """A zero-filled ``itk.Image[itk.F, d]`` with this geometry (a reference for ``itk.resample_image_filter``).

        Returns:
            itk.Image[itk.F, d] of size ``self.size`` with this spacing, origin and direction.
        """
        import itk

        d = self.ndim
        image = itk.Image[itk.F, d].New()
        region = itk.ImageRegion[d]()
        region.SetSize([int(s) for s in self._size])
        image.SetRegions(region)
        image.Allocate()
        image.FillBuffer(0.0)
        self.apply_to_itk(image)
        return image

    def apply_to_sitk(self, image: Any) -> Any:
        """Set spacing, origin and direction of a ``SimpleITK.Image`` in place (its size must match).

        Args:
            image: SimpleITK.Image with ``GetSize() == self.size``.

        Returns:
            ``image``, for chaining.

        Raises:
            ValueError: if the size differs.
        """
        if tuple(image.GetSize()) != self._size:
            raise ValueError(f"ImageGrid.apply_to_sitk() image size {tuple(image.GetSize())} does not match grid size {self._size}")
        image.SetSpacing([float(v) for v in self._spacing])
        image.SetOrigin([float(v) for v in self._origin])
        image.SetDirection([float(v) for v in self._direction.ravel()])
        return image

    def apply_to_itk(self, image: Any) -> Any:
        """Set spacing, origin and direction of an ``itk.Image`` in place (its size must match, start index 0).

        Args:
            image: itk.Image whose largest possible region has size ``self.size``.

        Returns:
            ``image``, for chaining.

        Raises:
            ValueError: if the size differs.
        """
        import itk

        region = image.GetLargestPossibleRegion()
        size = tuple(int(region.GetSize()[i]) for i in range(self.ndim))
        if size != self._size:
            raise ValueError(f"ImageGrid.apply_to_itk() image size {size} does not match grid size {self._size}")
        image.SetSpacing([float(v) for v in self._spacing])
        image.SetOrigin([float(v) for v in self._origin])
        # itk.matrix_from_array crashes (segfault) on a read-only array: pass a writable copy
        image.SetDirection(itk.matrix_from_array(np.array(self._direction, dtype=np.float64, order="C")))
        return image

    # ------------------------------------------------------------------ matrices

    def index_to_world(self) -> Array:
        """Homogeneous matrix from ITK continuous index (x, y[, z]) to physical LPS mm.

        ``world = origin + direction @ (spacing * index)``, exactly ITK's
        ``TransformContinuousIndexToPhysicalPoint``.

        Returns:
            float64 array (d+1, d+1): 4x4 in 3D, 3x3 in 2D.
        """
        d = self.ndim
        m = np.eye(d + 1)
        m[:d, :d] = self._direction * self._spacing[None, :]
        m[:d, d] = self._origin
        return m

    def world_to_index(self) -> Array:
        """Homogeneous matrix from physical LPS mm to ITK continuous index (x, y[, z]); inverse of :meth:`index_to_world`.

        Returns:
            float64 array (d+1, d+1).
        """
        d = self.ndim
        m = np.eye(d + 1)
        inv = np.linalg.inv(self._direction) / self._spacing[:, None]
        m[:d, :d] = inv
        m[:d, d] = -inv @ self._origin
        return m

    def _axis_flip(self) -> Array:
        """Homogeneous permutation that reverses the component order (its own inverse)."""
        d = self.ndim
        p = np.zeros((d + 1, d + 1))
        p[:d, :d] = np.eye(d)[::-1]
        p[d, d] = 1.0
        return p

    def voxel_to_world_matrix_torch_order(self) -> Array:
        """Homogeneous matrix from tensor-order continuous index (``Axes.VOXEL``: z, y, x) to world mm (x, y, z).

        A tensor position ``(k, j, i)`` (``tensor[..., k, j, i]``) maps to
        ``index_to_world() @ (i, j, k, 1)``.

        Returns:
            float64 array (d+1, d+1).
        """
        return self.index_to_world() @ self._axis_flip()

    def world_to_voxel_matrix_torch_order(self) -> Array:
        """Homogeneous matrix from world mm (x, y, z) to tensor-order continuous index (z, y, x) (``Axes.VOXEL``).

        Returns:
            float64 array (d+1, d+1); inverse of :meth:`voxel_to_world_matrix_torch_order`.
        """
        return self._axis_flip() @ self.world_to_index()

    def _normalized_to_index(self) -> Array:
        d = self.ndim
        n = np.asarray(self._size, dtype=np.float64)
        half = (n - 1.0) / 2.0
        scale = np.where(n > 1, half, 1.0)
        m = np.eye(d + 1)
        m[:d, :d] = np.diag(scale)
        m[:d, d] = half
        return m

    def transform(self, axes: Axes | str, to_axes: Axes | str) -> Array:
        """Homogeneous matrix mapping coordinates in frame ``axes`` to frame ``to_axes``.

        Args:
            axes: source frame (an :class:`Axes` member or its value, e.g. ``"voxel"``).
            to_axes: target frame.

        Returns:
            float64 array (d+1, d+1); apply to column vectors ``(c, 1)``.
        """
        src, dst = Axes(axes), Axes(to_axes)
        to_index = {
            Axes.INDEX: np.eye(self.ndim + 1),
            Axes.VOXEL: self._axis_flip(),
            Axes.NORMALIZED: self._normalized_to_index(),
            Axes.WORLD: self.world_to_index(),
        }
        from_index = {
            Axes.INDEX: np.eye(self.ndim + 1),
            Axes.VOXEL: self._axis_flip(),
            Axes.NORMALIZED: np.linalg.inv(self._normalized_to_index()),
            Axes.WORLD: self.index_to_world(),
        }
        return from_index[dst] @ to_index[src]

    def transform_points(self, points: ArrayLike, axes: Axes | str, to_axes: Axes | str) -> Array:
        """Map points (``..., d``) from frame ``axes`` to frame ``to_axes``.

        Args:
            points: array (..., d) of coordinates, component order of ``axes``
                ((z, y, x) for ``VOXEL``, (x, y, z) otherwise).
            axes: source frame.
            to_axes: target frame.

        Returns:
            float64 array of the same shape, component order of ``to_axes``.
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape[-1:] != (self.ndim,):
            raise ValueError(f"ImageGrid.transform_points() 'points' must have last dimension {self.ndim}, got shape {pts.shape}")
        m = self.transform(axes, to_axes)
        d = self.ndim
        return pts @ m[:d, :d].T + m[:d, d]

    def voxel_coordinates(self) -> Array:
        """Tensor-order continuous index of every voxel (``Axes.VOXEL``).

        Returns:
            float64 array (*shape, d): entry ``[k, j, i]`` is ``(k, j, i)``.
        """
        axes = [np.arange(n, dtype=np.float64) for n in self.shape]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def world_points(self) -> Array:
        """Physical LPS position (mm) of every voxel centre.

        Returns:
            float64 array (*shape, d), i.e. (z, y, x, 3) in 3D, components (x, y, z).
        """
        return self.transform_points(self.voxel_coordinates(), Axes.VOXEL, Axes.WORLD)

    def world_points_at(self, start: int, stop: int) -> Array:
        """Physical LPS position (mm) of the voxel centres with flat (C-order) indices ``start:stop``.

        The same values as ``world_points().reshape(-1, d)[start:stop]``, without building the
        whole array: for work on a large grid in chunks of voxels.

        Returns:
            float64 array (stop - start, d), components (x, y, z).
        """
        if not 0 <= start <= stop <= self.numel:
            raise ValueError(f"ImageGrid.world_points_at(): need 0 <= start <= stop <= {self.numel}, "
                             f"got {start}:{stop}")
        index = np.unravel_index(np.arange(start, stop), self.shape)
        return self.transform_points(np.stack(index, axis=-1).astype(np.float64), Axes.VOXEL, Axes.WORLD)

    # ------------------------------------------------------------------ pyramids

    def corner_aligned(self, factor: float) -> ImageGrid:
        """The grid about ``factor`` (>= 1) times coarser than its finest axis whose outer voxel centres are this grid's.

        Origin and direction are kept; the per-axis factors are :func:`~itk_odereg.core.levels.axis_factors`
        (an axis already coarser than ``factor * min(spacing)`` is shrunk less or not at all), and
        size and spacing follow :func:`corner_aligned_level` (the pyramid levels and the working
        grid of the engine): the outer voxel *centres* are kept, so the box shrinks by half a
        voxel of each grid at either end.
        """
        size, spacing = corner_aligned_level(self._size, self._spacing, factor=axis_factors(self._spacing, factor))
        return ImageGrid(size, spacing, self._origin, self._direction)
