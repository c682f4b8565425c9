"""Linear warping of images by displacement fields, and field composition."""
from __future__ import annotations

import torch

from ..extension import _HAS_OPS
from . import _checks, _reference

__all__ = ["warp", "sample_at", "compose"]


def warp(image: torch.Tensor, displacement: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample ``image`` at the voxel positions ``p + u(p)``.

    ``out[n, c, p] = image[n, c, p + u[n, :, p]]`` with linear interpolation
    (bilinear in 2D, trilinear in 3D). This is the same map as
    ``grid_sample(image, grid, align_corners=True)`` on the equivalent
    normalized grid, with grid components in (x, y[, z]) order.

    Differentiable with respect to both ``image`` and ``displacement``; both
    gradients come from one pass over the voxels. Runs on CPU and CUDA tensors.

    Args:
        image: Tensor[N, C, D, H, W] (3D) or Tensor[N, C, H, W] (2D), float32 or float64.
        displacement: Tensor[N, 3, D, H, W] or Tensor[N, 2, H, W] on the same grid, in
            voxel units; channel i displaces along spatial dim i of the tensor
            ((z, y, x) in 3D). Same dtype and device as ``image``.
        padding: ``"zeros"`` (samples outside the image are 0) or ``"border"``
            (positions are clamped to the image edge, passing no gradient there).

    Returns:
        Tensor[N, C, *S]: the warped image, on the displacement's grid.

    Raises:
        RuntimeError: on wrong ranks, channel counts, batch or spatial sizes,
            mixed dtypes or devices, integer dtypes, or an unknown padding.
    """
    if _HAS_OPS:
        return torch.ops.itk_odereg.warp.default(image, displacement, padding)
    _checks.check_image_and_displacement(image, displacement, "warp")
    _checks.check_padding(padding, "warp")
    return _reference.warp(image, displacement, padding)


def sample_at(image: torch.Tensor, displacement: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """:func:`warp` of an image that lies on another corner-aligned grid of the same box.

    Both grids span the same box with their first and last samples on its
    corners (``align_corners=True``, as :mod:`itk_odereg.core.separable` and the
    pyramid define levels). Voxel position ``p + u(p)`` of the displacement's
    grid (size S) is index ``(p + u(p)) * (S' - 1) / (S - 1)`` of the image's (size
    S'), so ``out[n, c, p] = image[n, c, (p + u(p)) * (S' - 1) / (S - 1)]``, linearly
    interpolated. Where S' = S this is :func:`warp`, bit for bit.

    Used to sample a smooth field kept on a coarse grid (a velocity on its
    control grid) at particles of a finer one, without upsampling it first:
    one interpolation instead of two, and a backward that scatters into the
    small grid.

    Args:
        image: Tensor[N, C, *S'], float32 or float64.
        displacement: Tensor[N, d, *S] in voxel units of its own grid (channel i
            along spatial dim i, tensor order). Every axis has S' = S, or at least
            2 samples on both grids.
        padding: ``"zeros"`` or ``"border"``, as in :func:`warp` (on the image's grid).

    Returns:
        Tensor[N, C, *S]: the samples, on the displacement's grid.
    """
    if _HAS_OPS:
        return torch.ops.itk_odereg.sample_at.default(image, displacement, padding)
    _checks.check_aligned_image_and_displacement(image, displacement, "sample_at")
    _checks.check_padding(padding, "sample_at")
    return _reference.sample_at(image, displacement, padding)


def compose(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Compose displacement fields: ``(u o v)(p) = v(p) + u(p + v(p))``.

    The map ``x -> x + (u o v)(x)`` applies ``v`` first, then ``u``. Zero
    padding: where ``p + v(p)`` leaves the grid, ``u`` counts as 0 there.

    Args:
        u: Tensor[N, d, *S], voxel units, tensor-order components (applied second).
        v: Tensor[N, d, *S], same grid, dtype and device (applied first).

    Returns:
        Tensor[N, d, *S]: the composed displacement, voxel units.
    """
    return v + warp(u, v, "zeros")


if _HAS_OPS:

    @torch.library.register_fake("itk_odereg::warp")
    def _warp_fake(image, displacement, padding="zeros"):
        _checks.check_image_and_displacement(image, displacement, "warp")
        _checks.check_padding(padding, "warp")
        return torch.empty_like(image, memory_format=torch.contiguous_format)

    def _backward_outputs(image, displacement, image_requires_grad, displacement_requires_grad):
        """Both ops' backward results: each gradient shaped like its input, or [0] when not requested."""
        def like(t, needed):
            return torch.empty_like(t, memory_format=torch.contiguous_format) if needed else t.new_empty((0,))
        return like(image, image_requires_grad), like(displacement, displacement_requires_grad)

    @torch.library.register_fake("itk_odereg::_warp_backward")
    def _warp_backward_fake(grad_output, image, displacement, padding, image_requires_grad, displacement_requires_grad):
        _checks.check_image_and_displacement(image, displacement, "_warp_backward")
        return _backward_outputs(image, displacement, image_requires_grad, displacement_requires_grad)

    @torch.library.register_fake("itk_odereg::sample_at")
    def _sample_at_fake(image, displacement, padding="zeros"):
        _checks.check_aligned_image_and_displacement(image, displacement, "sample_at")
        _checks.check_padding(padding, "sample_at")
        return image.new_empty((image.shape[0], image.shape[1], *displacement.shape[2:]))

    @torch.library.register_fake("itk_odereg::_sample_at_backward")
    def _sample_at_backward_fake(grad_output, image, displacement, padding, image_requires_grad,
                                 displacement_requires_grad):
        _checks.check_aligned_image_and_displacement(image, displacement, "_sample_at_backward")
        return _backward_outputs(image, displacement, image_requires_grad, displacement_requires_grad)
