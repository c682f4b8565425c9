"""Images in, tensors out, and back: SimpleITK / ITK / files <-> ``(tensor, ImageGrid)``.

The axis-order reversal between ITK (x, y, z) and torch (z, y, x) happens here
and in :mod:`itk_odereg.core.grid`, nowhere else: ``sitk.GetArrayFromImage``
and ``itk.array_from_image`` already return arrays in (z, y, x) order, and the
geometry goes into an :class:`~itk_odereg.core.grid.ImageGrid`.

Error messages name the caller and the argument, e.g.
``"register(): 'fixed' is a 4D image ..."``; pass ``caller`` and ``name`` from
the public function that received the image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .file_integrity import check_image_file
from .grid import ImageGrid
from .typing import InputKind, TensorOrArray

__all__ = [
    "LoadedImage",
    "input_kind",
    "load_image",
    "image_to_tensor",
    "check_registrable",
    "tensor_to_sitk",
    "tensor_to_itk",
    "tensor_to_input_kind",
]


@dataclass(frozen=True)
class LoadedImage:
    """An input image as a tensor on its grid, with a record of where it came from.

    Attributes:
        tensor: Tensor[1, 1, *shape] (float32 unless requested otherwise), spatial
            dims in torch order (z, y, x); intensities unchanged (no rescaling).
        grid: the image's :class:`ImageGrid`.
        kind: ``"sitk"``, ``"itk"`` or ``"path"``: what the caller passed, so
            results can be returned in the same kind (:func:`tensor_to_input_kind`).
        path: the file path for ``kind == "path"``, else None.
        dtype: NumPy dtype of the original pixels (e.g. ``int16``), to cast
            results back if wanted.
    """

    tensor: torch.Tensor
    grid: ImageGrid
    kind: InputKind
    path: str | None
    dtype: np.dtype


def _is_sitk_image(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    if not mod.startswith("SimpleITK"):
        return False
    import SimpleITK as sitk

    return isinstance(obj, sitk.Image)


def _is_itk_image(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("itk.") and hasattr(obj, "GetLargestPossibleRegion") and hasattr(obj, "GetImageDimension")


def input_kind(image: Any) -> InputKind | None:
    """What kind of image input ``image`` is.

    Args:
        image: anything.

    Returns:
        ``"sitk"`` for a ``SimpleITK.Image``, ``"itk"`` for an ``itk.Image`` /
        ``itk.VectorImage``, ``"path"`` for ``str`` / ``os.PathLike``, else None.
    """
    if _is_sitk_image(image):
        return "sitk"
    if _is_itk_image(image):
        return "itk"
    if isinstance(image, (str, os.PathLike)):
        return "path"
    return None


def _prefix(caller: str, name: str) -> str:
    return f"{caller}: '{name}'"


def _check_dimension(d: int, caller: str, name: str) -> None:
    if d == 4:
        raise ValueError(
            f"{_prefix(caller, name)} is a 4D image (a time series?); only 2D and 3D images are supported: "
            "extract one volume first (e.g. sitk.Extract or image[:, :, :, t])"
        )
    if d not in (2, 3):
        raise ValueError(f"{_prefix(caller, name)} is a {d}D image; only 2D and 3D images are supported")


def _check_size(size: tuple[int, ...], caller: str, name: str) -> None:
    if any(s == 0 for s in size):
        raise ValueError(f"{_prefix(caller, name)} is empty (size {size}, ITK order x, y[, z])")


def _read_path(path: Any, caller: str, name: str) -> Any:
    import SimpleITK as sitk

    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"{_prefix(caller, name)} path must be a str or os.PathLike of str, got {type(p).__name__}")
    if p == "":
        raise ValueError(f"{_prefix(caller, name)} is an empty path")
    if not os.path.exists(p):
        raise ValueError(f"{_prefix(caller, name)} file not found: '{p}'")
    if os.path.isdir(p):
        raise ValueError(f"{_prefix(caller, name)} is a directory, not an image file: '{p}'")
    check_image_file(p, _prefix(caller, name))
    try:
        return sitk.ReadImage(p)
    except RuntimeError as err:
        msg = str(err)
        detail = msg.split("sitk::ERROR:", 1)[-1].strip() if "sitk::ERROR:" in msg else msg.strip().splitlines()[-1]
        raise ValueError(f"{_prefix(caller, name)} could not be read as an image from '{p}': {detail}") from err


def _sitk_to_array(image: Any, caller: str, name: str) -> tuple[np.ndarray, ImageGrid]:
    import SimpleITK as sitk

    _check_dimension(image.GetDimension(), caller, name)
    ncomp = image.GetNumberOfComponentsPerPixel()
    pixel = image.GetPixelIDTypeAsString()
    if ncomp > 1:
        raise ValueError(
            f"{_prefix(caller, name)} has {ncomp} components per voxel ({pixel}); only scalar images are supported: "
            "select one component first (e.g. sitk.VectorIndexSelectionCast)"
        )
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise ValueError(f"{_prefix(caller, name)} has complex pixels ({pixel}); only real scalar images are supported")
    if "label" in pixel.lower():
        raise ValueError(
            f"{_prefix(caller, name)} is a label map ({pixel}); convert it with sitk.LabelMapToLabel first"
        )
    _check_size(tuple(image.GetSize()), caller, name)
    grid = ImageGrid.from_sitk(image)
    return sitk.GetArrayFromImage(image), grid


def _itk_to_array(image: Any, caller: str, name: str) -> tuple[np.ndarray, ImageGrid]:
    import itk

    _check_dimension(int(image.GetImageDimension()), caller, name)
    ncomp = int(image.GetNumberOfComponentsPerPixel())
    if ncomp > 1:
        raise ValueError(
            f"{_prefix(caller, name)} has {ncomp} components per voxel ({type(image).__name__}); only scalar images "
            "are supported: select one component first"
        )
    try:
        template = str(itk.template(image)).lower()
    except Exception:  # noqa: BLE001 - unknown wrapping: fall back to the array dtype check below
        template = ""
    if "complex" in type(image).__name__.lower() or "complex" in template:
        raise ValueError(f"{_prefix(caller, name)} has complex pixels; only real scalar images are supported")
    d = int(image.GetImageDimension())
    region = image.GetLargestPossibleRegion()
    _check_size(tuple(int(region.GetSize()[i]) for i in range(d)), caller, name)
    arr = itk.array_from_image(image)
    if np.iscomplexobj(arr):
        raise ValueError(f"{_prefix(caller, name)} has complex pixels; only real scalar images are supported")
    return arr, ImageGrid.from_itk(image)


#: largest |D^T D - I| of an accepted direction matrix: NIfTI headers store the direction as a
#: float32 quaternion, whose rounding is far below this; a sheared grid is far above it.
ORTHONORMAL_TOLERANCE = 1e-3


def direction_error(direction: np.ndarray) -> float:
    """``max |D^T D - I|`` of a direction matrix ``D`` (0 for a rotation or reflection)."""
    d = np.asarray(direction, dtype=np.float64)
    return float(np.abs(d.T @ d - np.eye(d.shape[0])).max())


def _check_direction(grid: ImageGrid, caller: str, name: str) -> None:
    """Refuse a direction matrix that is not a rotation (or reflection): a sheared or scaled grid.

    NIfTI cannot store one (ITK's writer replaces it with the nearest orthonormal matrix, so the
    outputs would sit up to voxels away from the input), and ITK's transforms assume the grid's
    axes are perpendicular and of unit length.
    """
    error = direction_error(grid.direction)
    if error > ORTHONORMAL_TOLERANCE:
        rows = "; ".join(" ".join(f"{v:.4g}" for v in row) for row in grid.direction)
        raise ValueError(
            f"{_prefix(caller, name)} has a direction matrix that is not orthonormal (max |D^T D - I| = {error:.3g}; "
            f"D = [{rows}]): its axes are sheared or scaled. NIfTI outputs cannot hold such a grid (ITK would "
            "write the nearest rotation, moving every voxel). Resample the image onto an orthonormal grid first "
            "(e.g. sitk.Resample onto a reference with the nearest rotation as direction)")


def _check_finite(arr: np.ndarray, caller: str, name: str, what: str = "") -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(arr.size - finite.sum() - n_nan)
    if n_nan == arr.size:
        raise ValueError(f"{_prefix(caller, name)} has only NaN voxels{what}")
    raise ValueError(
        f"{_prefix(caller, name)} has {n_nan} NaN and {n_inf} infinite voxel(s) of {arr.size}{what}; "
        "replace or mask them before registration (e.g. np.nan_to_num)"
    )


def load_image(
    image: Any,
    name: str = "image",
    caller: str = "load_image()",
    *,
    dtype: torch.dtype = torch.float32,
) -> LoadedImage:
    """Convert a SimpleITK image, ITK image or image file into a tensor on its grid.

    Files are read with ``SimpleITK.ReadImage`` (any format it supports; the
    format comes from the file itself). Intensities are kept as they are, only
    cast to ``dtype``. This checks the *input* (readable, 2D/3D, scalar,
    non-empty, finite); whether it is worth registering is
    :func:`check_registrable`'s decision.

    Args:
        image: ``SimpleITK.Image``, ``itk.Image`` or a path (``str`` / ``os.PathLike``).
        name: the argument's name in error messages (e.g. ``"fixed"``).
        caller: the public call site in error messages (e.g. ``"register()"``).
        dtype: floating tensor dtype (default float32).

    Returns:
        LoadedImage with ``tensor`` Tensor[1, 1, *shape] (spatial order z, y, x),
        ``grid``, ``kind``, ``path`` and the original ``dtype``.

    Raises:
        TypeError: if ``image`` is none of the accepted kinds.
        ValueError: for a missing or unreadable file (naming the path), a
            dimension other than 2 or 3 (4D named as such), a vector /
            multi-component / complex / label-map image, an empty image, a
            direction matrix that is not orthonormal (sheared), a truncated ``.gz`` or
            NIfTI file, or NaN / infinite voxels (also after the cast to ``dtype``, and in
            NIfTI files, whose reader turns them into 0: :mod:`itk_odereg.core.file_integrity`).
    """
    kind = input_kind(image)
    path = None
    if kind is None:
        raise TypeError(
            f"{_prefix(caller, name)} must be a SimpleITK.Image, an itk.Image or an image file path "
            f"(str or os.PathLike), got {type(image).__module__}.{type(image).__name__}"
        )
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{caller}: 'dtype' must be a floating torch dtype, got {dtype!r}")
    if kind == "path":
        path = os.fspath(image)
        arr, grid = _sitk_to_array(_read_path(image, caller, name), caller, name)
    elif kind == "sitk":
        arr, grid = _sitk_to_array(image, caller, name)
    else:
        arr, grid = _itk_to_array(image, caller, name)
    _check_direction(grid, caller, name)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    _check_finite(arr, caller, name)
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)
    if arr.dtype.kind == "f" and not torch.isfinite(tensor).all():
        _check_finite(tensor.float().numpy(), caller, name, f" after conversion to {dtype} (values out of range)")
    if tuple(tensor.shape) != grid.shape:  # pragma: no cover - guards the order convention
        raise RuntimeError(f"{caller}: internal error, array shape {tuple(tensor.shape)} != grid shape {grid.shape}")
    return LoadedImage(tensor[None, None], grid, kind, path, np.dtype(arr.dtype))


def image_to_tensor(
    image: Any, name: str = "image", caller: str = "image_to_tensor()", *, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ImageGrid]:
    """Shorthand for :func:`load_image` returning only ``(tensor [1, 1, *shape], grid)``.

    Args:
        image: ``SimpleITK.Image``, ``itk.Image`` or file path.
        name: argument name for error messages.
        caller: call site for error messages.
        dtype: floating tensor dtype (default float32).

    Returns:
        (Tensor[1, 1, *shape], ImageGrid).

    Raises:
        TypeError, ValueError: as :func:`load_image`.
    """
    loaded = load_image(image, name, caller, dtype=dtype)
    return loaded.tensor, loaded.grid


def check_registrable(tensor: torch.Tensor, name: str = "image", caller: str = "check_registrable()") -> None:
    """Refuse images that carry nothing to register: non-finite or constant.

    A constant image (e.g. all zeros, an empty mask, a failed export) has no
    gradient and no structure; every similarity metric is flat on it and any
    "registration" result would be arbitrary. "Constant" means
    ``max - min <= 4 * eps(float32) * max(|max|, |min|)`` (exactly equal when
    the image is all zero), so faint but real contrast still passes.

    Args:
        tensor: image tensor of any shape (e.g. [1, 1, *shape]), floating point.
        name: argument name for error messages.
        caller: call site for error messages.

    Raises:
        TypeError: if ``tensor`` is not a floating-point torch tensor.
        ValueError: if it is empty, has NaN / infinite values, or is constant.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise TypeError(f"{_prefix(caller, name)} must be a floating-point torch.Tensor, got {type(tensor).__name__}"
                        + (f" of {tensor.dtype}" if isinstance(tensor, torch.Tensor) else ""))
    if tensor.numel() == 0:
        raise ValueError(f"{_prefix(caller, name)} is empty (shape {tuple(tensor.shape)})")
    t = tensor.detach()
    if not torch.isfinite(t).all():
        _check_finite(t.double().cpu().numpy(), caller, name)
    lo, hi = float(t.min()), float(t.max())
    scale = max(abs(lo), abs(hi))
    if hi - lo <= 4 * float(np.finfo(np.float32).eps) * scale:
        raise ValueError(
            f"{_prefix(caller, name)} is constant (every voxel is {lo:g}): there is no image content to register"
        )


def _spatial_array(tensor: TensorOrArray, grid: ImageGrid, caller: str) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        arr = tensor.detach().cpu()
        if arr.dtype in (torch.float16, torch.bfloat16):
            arr = arr.float()
        arr = arr.numpy()
    elif isinstance(tensor, np.ndarray):
        arr = tensor
    else:
        raise TypeError(f"{caller}: 'tensor' must be a torch.Tensor or np.ndarray, got {type(tensor).__name__}")
    while arr.ndim > grid.ndim and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != grid.shape:
        raise ValueError(
            f"{caller}: 'tensor' must have spatial shape {grid.shape} (torch order, grid size {grid.size}) "
            f"with optional leading size-1 dims, got shape {tuple(np.shape(tensor))}"
        )
    return np.ascontiguousarray(arr)


def tensor_to_sitk(tensor: TensorOrArray, grid: ImageGrid, *, dtype: Any = None) -> Any:
    """A scalar ``SimpleITK.Image`` holding ``tensor`` on ``grid`` (origin, spacing, direction set).

    Args:
        tensor: Tensor or array [1, 1, *shape], [1, *shape] or [*shape], spatial
            order (z, y, x); ``shape`` must equal ``grid.shape``.
        grid: the geometry to attach.
        dtype: optional NumPy dtype to cast to first (e.g. ``LoadedImage.dtype``
            to return the caller's pixel type; floats are rounded when cast to
            integers). Default: keep the tensor's dtype.

    Returns:
        SimpleITK.Image of size ``grid.size``.

    Raises:
        ValueError: if the shape does not match the grid.
    """
    import SimpleITK as sitk

    arr = _spatial_array(tensor, grid, "tensor_to_sitk()")
    if dtype is not None:
        arr = _cast(arr, np.dtype(dtype))
    image = sitk.GetImageFromArray(arr, isVector=False)
    return grid.apply_to_sitk(image)


def _cast(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu" and arr.dtype.kind == "f":
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    return arr.astype(dtype)


_ITK_TYPES = {
    np.dtype(np.float32): "F",
    np.dtype(np.float64): "D",
    np.dtype(np.uint8): "UC",
    np.dtype(np.int16): "SS",
    np.dtype(np.uint16): "US",
}


def tensor_to_itk(tensor: TensorOrArray, grid: ImageGrid, *, dtype: Any = None) -> Any:
    """A scalar ``itk.Image`` holding ``tensor`` on ``grid`` (origin, spacing, direction set).

    Args:
        tensor: Tensor or array [1, 1, *shape], [1, *shape] or [*shape], spatial
            order (z, y, x); ``shape`` must equal ``grid.shape``.
        grid: the geometry to attach.
        dtype: optional NumPy dtype to cast to first. Pixel types not wrapped by
            ITK Python for images (only float32, float64, uint8, int16, uint16
            are used here) become float32.

    Returns:
        itk.Image[pixel, d] with its own copy of the data, start index 0.

    Raises:
        ValueError: if the shape does not match the grid.
    """
    import itk

    arr = _spatial_array(tensor, grid, "tensor_to_itk()")
    if dtype is not None:
        arr = _cast(arr, np.dtype(dtype))
    if arr.dtype not in _ITK_TYPES:
        arr = arr.astype(np.float32)
    image = itk.image_from_array(np.ascontiguousarray(arr))
    return grid.apply_to_itk(image)


def tensor_to_input_kind(tensor: TensorOrArray, grid: ImageGrid, kind: InputKind, *, dtype: Any = None) -> Any:
    """Return ``tensor`` on ``grid`` as the kind of image the caller passed in.

    Args:
        tensor: as :func:`tensor_to_sitk`.
        grid: the geometry to attach.
        kind: ``LoadedImage.kind``: ``"sitk"`` or ``"path"`` give a
            ``SimpleITK.Image`` (a caller that passed a path gets an image object
            it can write; nothing is written here), ``"itk"`` an ``itk.Image``.
        dtype: optional NumPy dtype to cast to.

    Returns:
        SimpleITK.Image or itk.Image.

    Raises:
        ValueError: for an unknown ``kind`` or a shape mismatch.
    """
    if kind in ("sitk", "path"):
        return tensor_to_sitk(tensor, grid, dtype=dtype)
    if kind == "itk":
        return tensor_to_itk(tensor, grid, dtype=dtype)
    raise ValueError(f"tensor_to_input_kind(): 'kind' must be 'sitk', 'itk' or 'path', got {kind!r}")
