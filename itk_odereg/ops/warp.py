"""Linear warping of images by displacement fields, and field composition."""
from __future__ import annotations

import torch

from ..extension import _HAS_OPS
from . import _checks, _reference

__all__ = ["warp", "compose"]


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

    @torch.library.register_fake("itk_odereg::_warp_backward")
    def _warp_backward_fake(grad_output, image, displacement, padding, image_requires_grad, displacement_requires_grad):
        _checks.check_image_and_displacement(image, displacement, "_warp_backward")
        grad_image = (
            torch.empty_like(image, memory_format=torch.contiguous_format)
            if image_requires_grad
            else image.new_empty((0,))
        )
        grad_disp = (
            torch.empty_like(displacement, memory_format=torch.contiguous_format)
            if displacement_requires_grad
            else displacement.new_empty((0,))
        )
        return grad_image, grad_disp
