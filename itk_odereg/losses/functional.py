"""Image similarity losses for registration (stateless functions).

Every function compares a ``fixed`` image with a ``moving`` image that has
already been warped onto the fixed grid, and returns a 0-dim tensor to
*minimize*, differentiable with respect to ``moving`` (and ``fixed``).

Common conventions:

* Images are Tensor[N, C, D, H, W] (3D) or Tensor[N, C, H, W] (2D), float32 or
  float64, ``fixed`` and ``moving`` of the same shape, dtype and device. Axes are
  in tensor order (z, y, x). Channels are compared channel by channel and the
  losses averaged over batch and channels.
* ``mask`` (optional) is Tensor[N, 1, *S] or Tensor[1, 1, *S], bool or numeric,
  on the fixed grid; voxels where it is nonzero are *inside*. A masked loss
  depends only on image values inside the mask: values outside it may be
  anything (finite) without changing the loss or receiving gradient.
* Lengths (``window``, ``spacing``) are in voxels unless stated otherwise.

Functions (one module each: :mod:`.lncc`, :mod:`.mse`, :mod:`.mutual_information`, :mod:`.ngf`;
shared checks and box sums in :mod:`._checks`):

* :func:`lncc_loss`: ``1 - mean local NCC^2`` (NODEO, VoxelMorph), box sums
  by in-place running sums, with a hand-written backward.
* :func:`mse_loss`: mean squared difference.
* :func:`mutual_information_loss`: Mattes mutual information with cubic
  B-spline Parzen windows (``-MI`` or ``-NMI``), optional random sampling.
* :func:`ngf_loss`: normalized gradient fields, ``1 - mean (n_f . n_m)^2``.
"""
from __future__ import annotations

from ._checks import box_sum
from .lncc import lncc_loss
from .mse import mse_loss
from .mutual_information import mutual_information_loss
from .ngf import ngf_loss

__all__ = ["lncc_loss", "mse_loss", "mutual_information_loss", "ngf_loss", "box_sum"]
