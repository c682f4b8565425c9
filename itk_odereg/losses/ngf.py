"""Normalized gradient fields, ``1 - mean (n_f . n_m)^2``, with a hand-written backward."""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import torch

from ..core.differences import central_differences, one_sided_differences_adjoint

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

    def get(self, fixed, mask_arg, mask, eps, spacing, nd) -> tuple:
        """(the fixed image's :class:`_GradientTerms`, the stencil-eroded mask or None)."""
        key = (fixed, fixed._version, mask_arg, None if mask_arg is None else mask_arg._version, eps,
               None if spacing is None else tuple(spacing))
        same = self._key is not None and all(
            (a is b) if i in (0, 2) else (a == b) for i, (a, b) in enumerate(zip(self._key, key)))
        if not same:
            w = _stencil_mask(mask, nd)
            self._terms = (_gradient_terms(fixed, w, eps, spacing, nd), w)
            self._key = key
        return self._terms


class _GradientTerms(NamedTuple):
    """One image's part of NGF: its differences, ``|grad I|^2 + eps_I^2`` and the chain factor
    ``d eps_I^2 / d (sum_w |grad I|^2)`` per image and channel ([N, C, 1..]: eps^2 / count where
    the floor is not active, else 0)."""

    grads: List[torch.Tensor]
    denominator: torch.Tensor
    chain: torch.Tensor


def _stencil_mask(m: Optional[torch.Tensor], nd: int) -> Optional[torch.Tensor]:
    return None if m is None else _erode_stencil(m, nd)


@torch.no_grad()
def _gradient_terms(image: torch.Tensor, w: Optional[torch.Tensor], eps: float, spacing, nd: int) -> _GradientTerms:
    """:class:`_GradientTerms` of ``image``; ``w`` the stencil-eroded mask or None."""
    dims = tuple(range(2, 2 + nd))
    # Central differences inside, one-sided on the border (torch.gradient, edge order 1), per mm with spacing.
    grads = central_differences(image, spacing, "one_sided")
    squared = grads[0].square()
    for g in grads[1:]:
        squared.addcmul_(g, g)
    if w is None:
        count = float(math.prod(image.shape[2:]))
        mean_square = squared.sum(dims, keepdim=True) / count
    else:
        count = w.sum(dims, keepdim=True).clamp_min(1.0)
        mean_square = (squared * w).sum(dims, keepdim=True) / count
    edge = (eps * eps) * mean_square
    floor = _eps_floor(image.dtype)
    chain = (eps * eps) * (edge > floor).to(image.dtype) / count
    return _GradientTerms(grads, squared.add_(edge.clamp_min(floor)), chain)


class _NGF(torch.autograd.Function):
    """``1 - mean (n_f . n_m)^2`` with a hand-written backward (either image, or both).

    With dot = grad f . grad g, D_I = |grad I|^2 + eps_I^2 and r = dot / (D_f D_g), the
    value is r dot and, with c = dL/dvalue (-mask / total), the chain rule gives

        dL/d grad g = 2 c r grad f + 2 (a + s chain_g mask) grad g,    a = -c r dot / D_g,

    s the sum of a over the image (eps_g^2 follows the mean of |grad g|^2 inside the mask),
    and dL/dg the adjoint of the differences of that (symmetrically for f). Autograd through
    ``torch.gradient`` took three times as long and kept more full-size tensors.
    """

    @staticmethod
    def forward(ctx, fixed, moving, w, eps, spacing, nd, fixed_terms: Optional[_GradientTerms]):
        if fixed_terms is None:
            fixed_terms = _gradient_terms(fixed, w, eps, spacing, nd)
        moving_terms = _gradient_terms(moving, w, eps, spacing, nd)
        gf, gm = fixed_terms.grads, moving_terms.grads
        dot = gf[0] * gm[0]
        for a, b in zip(gf[1:], gm[1:]):
            dot.addcmul_(a, b)
        r = dot / fixed_terms.denominator
        r.div_(moving_terms.denominator)
        if w is None:
            total = float(r.numel())
            value_sum = torch.dot(r.reshape(-1), dot.reshape(-1))
        else:
            total = max(float(w.sum()) * fixed.shape[1], 1.0)
            value_sum = (r * dot * w).sum()
        ctx.total, ctx.spacing = total, spacing
        ctx.fixed_terms, ctx.moving_terms = fixed_terms, moving_terms
        ctx.save_for_backward(dot, r, w)
        return 1.0 - value_sum / total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        dot, r, w = ctx.saved_tensors
        need_f, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # -c: the derivative of the loss by each voxel's value, negated (mask / total).
        minus_c = grad_out / ctx.total
        if w is not None:
            minus_c = minus_c * w
        dims = tuple(range(2, dot.dim()))
        grads = []
        for need, own, other in ((need_f, ctx.fixed_terms, ctx.moving_terms),
                                 (need_m, ctx.moving_terms, ctx.fixed_terms)):
            if not need:
                grads.append(None)
                continue
            # a = dL/dD_own = -c r dot / D_own; and dL/d|grad own|^2 = a + s chain w.
            a = (r * dot).div_(own.denominator).mul_(minus_c)
            s = a.sum(dims, keepdim=True).mul_(own.chain)
            d_squared = a.add_(s if w is None else s * w).mul_(2.0)
            d_dot = (r * minus_c).mul_(-2.0)
            grads.append(one_sided_differences_adjoint(
                [torch.mul(d_dot, g_other).addcmul_(d_squared, g_own) for g_own, g_other in zip(own.grads, other.grads)],
                ctx.spacing))
        return grads[0], grads[1], None, None, None, None, None


def _ngf(fixed, moving, eps, mask, spacing, cache: Optional[NGFFixedCache]) -> torch.Tensor:
    op = "ngf_loss"
    nd = _check_pair(fixed, moving, op)
    eps = _check_positive(eps, "eps", op)
    spacing = _check_spacing(spacing, nd, op)
    m = _prepare_mask(mask, fixed, op)
    # A fixed image that needs its gradient is recomputed every call (it may change under the optimizer).
    if cache is not None and not fixed.requires_grad:
        fixed_terms, w = cache.get(fixed, mask, m, eps, spacing, nd)
    else:
        fixed_terms, w = None, _stencil_mask(m, nd)
    return _NGF.apply(fixed, moving, w, eps, spacing, nd, fixed_terms)
