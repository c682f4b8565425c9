"""Registration kernels as torch ops (``torch.ops.itk_odereg.*``), CPU and CUDA.

Conventions shared by every op: tensors are [N, C, *S] with spatial dims in
tensor order ((z, y, x) in 3D, (y, x) in 2D); displacements are [N, d, *S] in
voxel units with channel i along spatial dim i. Conversion to ITK's physical
LPS convention happens outside the ops.
"""
from __future__ import annotations

from ..extension import has_ops, library_path
from .box import box_sum_
from .bspline import bspline_control_shape, bspline_to_dense
from .regularizers import bending_energy, diffusion_energy, jacobian_determinant, jacobian_penalty
from .resample import resample_linear
from .tanh_mlp import tanh_mlp
from .warp import compose, sample_at, warp

__all__ = [
    "warp",
    "sample_at",
    "box_sum_",
    "resample_linear",
    "tanh_mlp",
    "compose",
    "bspline_to_dense",
    "bspline_control_shape",
    "diffusion_energy",
    "bending_energy",
    "jacobian_determinant",
    "jacobian_penalty",
    "library_path",
    "has_ops",
]
