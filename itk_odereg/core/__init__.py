"""Physical-space core: image grids, coordinate frames, and image <-> tensor conversion.

* :class:`ImageGrid`: size (x, y, z), shape (z, y, x), spacing, origin, direction;
  homogeneous index / voxel / normalized / world matrices (:class:`Axes`).
* :func:`load_image` / :func:`image_to_tensor`: SimpleITK, ITK or file -> tensor [1, 1, *shape] + grid.
* :func:`tensor_to_sitk` / :func:`tensor_to_itk`: back, with the geometry.
"""
from __future__ import annotations

from .grid import ALIGN_CORNERS, Axes, ImageGrid
from .image import (
    LoadedImage,
    check_registrable,
    image_to_tensor,
    input_kind,
    load_image,
    tensor_to_input_kind,
    tensor_to_itk,
    tensor_to_sitk,
)

__all__ = [
    "ALIGN_CORNERS",
    "Axes",
    "ImageGrid",
    "LoadedImage",
    "check_registrable",
    "image_to_tensor",
    "input_kind",
    "load_image",
    "tensor_to_input_kind",
    "tensor_to_itk",
    "tensor_to_sitk",
]
