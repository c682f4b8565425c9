"""itk-odereg: neural-ODE deformable image registration for ITK, SimpleITK and ANTs workflows.

The compiled kernels are torch ops in :mod:`itk_odereg.ops`.
"""
from __future__ import annotations

from . import ops
from ._version import __version__

__all__ = ["ops", "__version__"]
