"""Normalized gradient fields, ``1 - mean (n_f . n_m)^2``."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..core.differences import central_differences

from ._checks import _eps_floor, _check_pair, _check_positive, _prepare_mask


# --------------------------------------------------------------------------------------------
# NGF
# --------------------------------------------------------------------------------------------


def _check_spacing(spacing, ndim: int, op: str):
    if spacing is None:
        return None
    ok = isinstance(spacing, (tuple, list)) and len(spacing) == ndim and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in spacing
    )
    if not ok:
        raise ValueError(
            f"itk_odereg.{op}(): 'spacing' must be None or {ndim} positive numbers (mm, tensor order), got {spacing!r}"
        )
    return [float(s) for s in spacing]


def _erode_stencil(m: torch.Tensor, nd: int) -> torch.Tensor:
    """Mask voxels whose central-difference neighbours (+-1 along each axis) are all inside ``m``."""
    out = m
    for k in range(nd):
        d = 2 + k
        length = m.shape[d]
        if length < 2:
            continue
        lo = torch.cat([m.narrow(d, 0, 1), m.narrow(d, 0, length - 1)], d)  # neighbour at i - 1 (itself at 0)
        hi = torch.cat([m.narrow(d, 1, length - 1), m.narrow(d, length - 1, 1)], d)  # neighbour at i + 1
        out = out * lo * hi
    return out


def ngf_loss(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    eps: float = 0.1,
    mask: Optional[torch.Tensor] = None,
    spacing: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """Normalized gradient fields loss (Haber & Modersitzki 2006), ``1 - mean (n_f . n_m)^2``.

    With ``n_I = grad I / sqrt(|grad I|^2 + eps_I^2)``::

        (n_f . n_m)^2 = (grad f . grad g)^2 / ((|grad f|^2 + eps_f^2) (|grad g|^2 + eps_g^2))

    which is 1 where the edges of the two images are parallel or
    anti-parallel, whatever their contrast (it is invariant to intensity
    inversion), and 0 where they are orthogonal or where an image is flat.
    Gradients are central differences (one-sided on the image border), per
    mm when ``spacing`` is given.

    The edge parameter is relative: ``eps_I = eps * sqrt(mean |grad I|^2)``,
    the root-mean-square gradient magnitude of each image over the region
    (and batch element, channel). Gradients much weaker than ``eps_I`` (noise,
    smooth shading) count little; the scale-free choice makes the loss
    invariant to ``a * I + b``. The RMS is differentiated too (exact
    gradients); a floor of 1e-15 (float32) keeps constant images finite.

    Args:
        fixed: Tensor[N, C, D, H, W] or Tensor[N, C, H, W], float32/float64,
            every spatial size >= 2.
        moving: warped moving image, same shape, dtype and device.
        eps: edge parameter relative to the RMS gradient magnitude (> 0).
            Larger values suppress weak edges and noise more.
        mask: optional Tensor[N or 1, 1, *S]. The mean runs over mask voxels
            whose central-difference neighbours are inside the mask too (the
            mask eroded by the stencil), so values outside never matter.
        spacing: optional voxel spacing in mm, tensor order; changes the
            gradient directions for anisotropic voxels.

    Returns:
        0-dim tensor in [0, 1].

    Raises:
        ValueError: bad shapes, ``eps`` or ``spacing``.
    """
    return _ngf(fixed, moving, eps, mask, spacing, cache=None)


class NGFFixedCache:
    """The fixed image's gradient terms of the last fixed image seen (``NGFLoss``), reused while
    the same tensor (not modified in place since), mask, ``eps`` and spacing come back."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._terms: Optional[tuple] = None

    def get(self, fixed, mask_arg, mask, eps, spacing, nd):
        key = (fixed, fixed._version, mask_arg, None if mask_arg is None else mask_arg._version, eps,
               None if spacing is None else tuple(spacing))
        same = self._key is not None and all(
            (a is b) if i in (0, 2) else (a == b) for i, (a, b) in enumerate(zip(self._key, key)))
        if not same:
            with torch.no_grad():
                self._terms = _fixed_terms(fixed, mask, eps, spacing, nd)
            self._key = key
        return self._terms


def _fixed_terms(fixed, m, eps, spacing, nd):
    """(gradient components, |grad f|^2 + eps_f^2, stencil-eroded mask or None) of the fixed image."""
    dims = tuple(range(2, 2 + nd))
    # Central differences inside, one-sided on the border (torch.gradient, edge order 1), per mm with spacing.
    gf = central_differences(fixed, spacing, "one_sided")
    nf2 = sum(g.square() for g in gf)
    if m is None:
        w = None
        ms_f = nf2.mean(dims, keepdim=True)
    else:
        w = _erode_stencil(m, nd)
        cnt = w.sum(dims, keepdim=True).clamp_min(1.0)
        ms_f = (nf2 * w).sum(dims, keepdim=True) / cnt
    e_f = (eps * eps * ms_f).clamp_min(_eps_floor(fixed.dtype))
    return gf, nf2 + e_f, w


def _ngf(fixed, moving, eps, mask, spacing, cache: Optional[NGFFixedCache]) -> torch.Tensor:
    op = "ngf_loss"
    nd = _check_pair(fixed, moving, op)
    eps = _check_positive(eps, "eps", op)
    spacing = _check_spacing(spacing, nd, op)
    m = _prepare_mask(mask, fixed, op)
    dims = tuple(range(2, 2 + nd))
    # A fixed image that needs its gradient is recomputed every call (it may change under the optimizer).
    if cache is not None and not fixed.requires_grad:
        gf, denominator_f, w = cache.get(fixed, mask, m, eps, spacing, nd)
    else:
        gf, denominator_f, w = _fixed_terms(fixed, m, eps, spacing, nd)
    gm = central_differences(moving, spacing, "one_sided")
    nm2 = sum(g.square() for g in gm)
    dot = sum(a * b for a, b in zip(gf, gm))
    if w is None:
        ms_m = nm2.mean(dims, keepdim=True)
    else:
        cnt = w.sum(dims, keepdim=True).clamp_min(1.0)
        ms_m = (nm2 * w).sum(dims, keepdim=True) / cnt
    e_m = (eps * eps * ms_m).clamp_min(_eps_floor(fixed.dtype))
    # (n_f . n_m)^2 of the normalized gradient fields (core.differences.normalized_gradient) in closed
    # form: n is never formed, and eps is a tensor per image and channel (relative to the RMS gradient).
    value = dot.square() / (denominator_f * (nm2 + e_m))
    if w is None:
        return 1.0 - value.mean()
    return 1.0 - (value * w).sum() / (w.sum() * fixed.shape[1]).clamp_min(1.0)
