"""Type aliases shared by the physical-space layer (:mod:`itk_odereg.core`, :mod:`itk_odereg.transforms`).

The aliases are for annotations only; nothing here is checked at run time.
"""
from __future__ import annotations

import os
from typing import Literal, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "Array",
    "ArrayLike",
    "PathLike",
    "ScalarOrTuple",
    "Shape",
    "Size",
    "InputKind",
    "TensorOrArray",
]

#: A NumPy array (float64 unless a function says otherwise).
Array = np.ndarray

#: Anything ``np.asarray`` turns into a numeric array: sequences, arrays, tensors on the CPU.
ArrayLike = Union[np.ndarray, Sequence[float], Sequence[Sequence[float]], torch.Tensor]

#: A file system path as accepted by ``open``.
PathLike = Union[str, os.PathLike]

#: One number for every axis, or one per axis (in the order the function documents).
ScalarOrTuple = Union[float, Sequence[float]]

#: Spatial shape in tensor order: (z, y, x) in 3D, (y, x) in 2D.
Shape = Tuple[int, ...]

#: Image size in ITK order: (x, y, z) in 3D, (x, y) in 2D.
Size = Tuple[int, ...]

#: What the caller passed in, so results can be handed back in the same kind.
InputKind = Literal["sitk", "itk", "path"]

#: A torch tensor or a NumPy array.
TensorOrArray = Union[torch.Tensor, np.ndarray]
