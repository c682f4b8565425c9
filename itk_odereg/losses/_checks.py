"""Input checks and box sums shared by the similarity losses (private)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from ..ops.box import box_sum_


_FLOATING = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_pair(fixed: torch.Tensor, moving: torch.Tensor, op: str) -> int:
    """Validate a fixed/moving pair; return the number of spatial dims (2 or 3)."""
    for name, t in (("fixed", fixed), ("moving", moving)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"itk_odereg.{op}(): '{name}' must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATING:
            raise ValueError(f"itk_odereg.{op}(): '{name}' must be float32 or float64, got {t.dtype}")
        if t.dim() not in (4, 5):
            raise ValueError(
                f"itk_odereg.{op}(): '{name}' must have shape [N, C, H, W] (2D) or [N, C, D, H, W] (3D), "
                f"got {list(t.shape)}"
            )
        if t.numel() == 0:
            raise ValueError(f"itk_odereg.{op}(): '{name}' must not be empty, got shape {list(t.shape)}")
    if fixed.shape != moving.shape:
        raise ValueError(
            f"itk_odereg.{op}(): 'fixed' and 'moving' must have the same shape (same grid), "
            f"got {list(fixed.shape)} and {list(moving.shape)}"
        )
    if fixed.dtype != moving.dtype:
        raise ValueError(
            f"itk_odereg.{op}(): 'fixed' ({fixed.dtype}) and 'moving' ({moving.dtype}) must have the same dtype"
        )
    if fixed.device != moving.device:
        raise ValueError(
            f"itk_odereg.{op}(): 'fixed' ({fixed.device}) and 'moving' ({moving.device}) must be on the same device"
        )
    return fixed.dim() - 2


def _prepare_mask(mask: Optional[torch.Tensor], like: torch.Tensor, op: str) -> Optional[torch.Tensor]:
    """Check ``mask`` against the image ``like``; return it as a 0/1 tensor [N, 1, *S] of like's dtype."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"itk_odereg.{op}(): 'mask' must be a torch.Tensor or None, got {type(mask).__name__}")
    spatial = tuple(like.shape[2:])
    n = like.shape[0]
    bad_shape = mask.dim() != like.dim() or mask.shape[1] != 1 or tuple(mask.shape[2:]) != spatial
    if bad_shape or mask.shape[0] not in (1, n):
        raise ValueError(
            f"itk_odereg.{op}(): 'mask' must have shape [{n}, 1, {', '.join(map(str, spatial))}] "
            f"(or batch size 1), got {list(mask.shape)}"
        )
    if mask.device != like.device:
        raise ValueError(f"itk_odereg.{op}(): 'mask' ({mask.device}) must be on the images' device ({like.device})")
    m = (mask != 0).to(like.dtype)
    return m.expand(n, *m.shape[1:]).contiguous() if m.shape[0] != n else m


def _window_radii(window: Union[int, Sequence[int]], ndim: int, op: str) -> Tuple[int, ...]:
    """Turn an odd window width (int or one per spatial dim) into half-widths."""
    ws = [window] * ndim if isinstance(window, int) else list(window) if isinstance(window, (list, tuple)) else None
    ok = ws is not None and len(ws) == ndim and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 and w % 2 == 1 for w in ws
    )
    if not ok:
        raise ValueError(
            f"itk_odereg.{op}(): 'window' must be an odd positive int (voxels) or a sequence of {ndim} of them "
            f"(tensor order), got {window!r}"
        )
    return tuple(w // 2 for w in ws)


def _check_positive(value: float, name: str, op: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"itk_odereg.{op}(): '{name}' must be a positive finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Box sums
# --------------------------------------------------------------------------------------------


class _BoxSum(torch.autograd.Function):
    """Box sum; its adjoint is the same box sum (symmetric windows, zero padding)."""

    @staticmethod
    def forward(ctx, x, radii):
        ctx.radii = radii
        return box_sum_(x.clone(memory_format=torch.contiguous_format), radii)

    @staticmethod
    def backward(ctx, grad):
        return _BoxSum.apply(grad, ctx.radii), None


def box_sum(x: torch.Tensor, window: Union[int, Sequence[int]]) -> torch.Tensor:
    """Sum of ``x`` over a centred box window at every voxel (zero padding outside the image).

    Equals a convolution with a ones kernel and zero padding (``conv3d`` with
    ``torch.ones(w, w, w)``, padding ``w // 2``), but is separable and O(1)
    per voxel and axis whatever the window: a cumulative-sum difference along
    the last axis and running sums along the others, in place on one copy of
    ``x``. Differentiable (the backward is the same box sum), so it also
    serves as a fast box smoother of velocity fields (divide by the window
    volume; repeat it for a Gaussian-like kernel).

    Args:
        x: Tensor[N, C, D, H, W] or Tensor[N, C, H, W], float32 or float64.
        window: odd window width in voxels, int or one per spatial dim (tensor order).

    Returns:
        Tensor of x's shape (new; ``x`` is not modified).

    Raises:
        ValueError: bad ``x`` or ``window``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5) or x.dtype not in _FLOATING:
        raise ValueError("itk_odereg.box_sum(): 'x' must be a float32/float64 Tensor[N, C, (D,) H, W]")
    radii = _window_radii(window, x.dim() - 2, "box_sum")
    return _BoxSum.apply(x, radii)


def _window_counts(
    shape: Sequence[int], radii: Sequence[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Number of voxels in each clipped window, Tensor[*shape], as an outer product of 1-D counts."""
    n = None
    nd = len(shape)
    for k, (length, r) in enumerate(zip(shape, radii)):
        i = torch.arange(length, device=device)
        c = (torch.clamp(i + r, max=length - 1) - torch.clamp(i - r, min=0) + 1).to(dtype)
        c = c.reshape([length if j == k else 1 for j in range(nd)])
        n = c if n is None else n * c
    return n


def _eps_floor(dtype: torch.dtype) -> float:
    # Smallest per-voxel variance regularizer (intensity^2 units): keeps the product of the two
    # regularized variances (and its square in the backward) far from underflow.
    return 1e-15 if dtype == torch.float32 else 1e-100
