"""Atomic writers of SimpleITK and ITK transforms (``.h5``, ``.mat``, ``.tfm``)."""
from __future__ import annotations

import os
from typing import Any, Sequence


from ..core.typing import PathLike
from ..io_utils import atomic_write



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
