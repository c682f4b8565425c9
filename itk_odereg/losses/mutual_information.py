"""Mattes mutual information with cubic B-spline Parzen windows (``-MI`` or ``-NMI``)."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ..core.intensity import robust_range

from ._checks import _check_pair, _prepare_mask


# --------------------------------------------------------------------------------------------
# Mutual information
# --------------------------------------------------------------------------------------------

_MI_PAD = 2  # bins of padding on each side of the intensity range (cubic B-spline support is 4 bins)
_MI_CHUNK = 1 << 16  # samples per chunk of the joint-histogram computation
_MI_DENSE_MIN = 8192  # chunks at least this long use dense weight matrices and a matrix product


def _bspline_weights(t: torch.Tensor, bins: int, derivative: bool = False):
    """Cubic B-spline Parzen weights of normalized intensities ``t`` in [0, 1].

    ``t`` maps to the bin coordinate ``x = 2 + t * (bins - 5)``, so that the
    kernel's support (4 bins) stays inside [0, bins - 1].

    Returns:
        (first bin index Tensor[S] long, weights Tensor[S, 4][, d weights / d t Tensor[S, 4]])
    """
    scale = bins - 2 * _MI_PAD - 1
    x = _MI_PAD + t * scale
    fl = x.floor().clamp_(max=bins - _MI_PAD - 1)
    f = x - fl
    base = fl.long() - 1
    f2 = f * f
    f3 = f2 * f
    omf = 1.0 - f
    w = torch.stack(
        [
            omf * omf * omf / 6.0,
            (3.0 * f3 - 6.0 * f2 + 4.0) / 6.0,
            (-3.0 * f3 + 3.0 * f2 + 3.0 * f + 1.0) / 6.0,
            f3 / 6.0,
        ],
        dim=-1,
    )
    if not derivative:
        return base, w
    dw = torch.stack([-0.5 * omf * omf, 1.5 * f2 - 2.0 * f, -1.5 * f2 + f + 0.5, 0.5 * f2], dim=-1) * scale
    return base, w, dw


def _dense_weights(base: torch.Tensor, w: torch.Tensor, bins: int) -> torch.Tensor:
    offs = torch.arange(4, device=base.device)
    return w.new_zeros((base.shape[0], bins)).scatter_(1, base[:, None] + offs, w)


def _pair_index(bf: torch.Tensor, bm: torch.Tensor, bins: int) -> torch.Tensor:
    """Flat joint-histogram index of the 4 x 4 bins each sample touches, Tensor[S, 4, 4]."""
    offs = torch.arange(4, device=bf.device)
    return ((bf[:, None] + offs) * bins)[:, :, None] + (bm[:, None] + offs)[:, None, :]


class _ParzenJointHistogram(torch.autograd.Function):
    """Joint histogram H[k, l] = sum_s w_k(t_f[s]) w_l(t_m[s]) with cubic B-spline weights (float64).

    Samples go in chunks. A chunk of at least ``_MI_DENSE_MIN`` samples uses
    dense [S, bins] weight matrices and one matrix product (fast for many
    samples); a smaller one scatters its 16 weights per sample with
    ``bincount`` (no threaded BLAS call, whose start-up dominates small
    products, especially on a busy machine).
    """

    @staticmethod
    def forward(ctx, tf, tm, bins):
        hist = torch.zeros(bins * bins, dtype=torch.float64, device=tf.device)
        for s in range(0, tf.shape[0], _MI_CHUNK):
            bf, wf = _bspline_weights(tf[s:s + _MI_CHUNK], bins)
            bm, wm = _bspline_weights(tm[s:s + _MI_CHUNK], bins)
            if bf.shape[0] >= _MI_DENSE_MIN:
                hist += (_dense_weights(bf, wf, bins).t() @ _dense_weights(bm, wm, bins)).reshape(-1).to(torch.float64)
            else:
                vals = (wf[:, :, None] * wm[:, None, :]).reshape(-1).to(torch.float64)
                hist += torch.bincount(_pair_index(bf, bm, bins).reshape(-1), vals, minlength=bins * bins)
        ctx.bins = bins
        ctx.save_for_backward(tf, tm)
        return hist.reshape(bins, bins)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hist):
        tf, tm = ctx.saved_tensors
        bins = ctx.bins
        gh = grad_hist.to(tf.dtype).contiguous()
        need_f, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_f = torch.empty_like(tf) if need_f else None
        grad_m = torch.empty_like(tm) if need_m else None
        offs = torch.arange(4, device=tf.device)
        for s in range(0, tf.shape[0], _MI_CHUNK):
            sl = slice(s, s + _MI_CHUNK)
            bf, wf, dwf = _bspline_weights(tf[sl], bins, derivative=True)
            bm, wm, dwm = _bspline_weights(tm[sl], bins, derivative=True)
            if bf.shape[0] >= _MI_DENSE_MIN:
                if need_m:  # dL/dw_l(t_m[s]) = sum_k w_k(t_f[s]) G[k, l]
                    gm = _dense_weights(bf, wf, bins) @ gh
                    grad_m[sl] = (gm.gather(1, bm[:, None] + offs) * dwm).sum(1)
                if need_f:
                    gf = _dense_weights(bm, wm, bins) @ gh.t()
                    grad_f[sl] = (gf.gather(1, bf[:, None] + offs) * dwf).sum(1)
            else:
                g = gh.reshape(-1)[_pair_index(bf, bm, bins)]  # [S, 4, 4]: G[k_i, l_j]
                if need_m:
                    grad_m[sl] = ((g * wf[:, :, None]).sum(1) * dwm).sum(1)
                if need_f:
                    grad_f[sl] = ((g * wm[:, None, :]).sum(2) * dwf).sum(1)
        return grad_f, grad_m, None


def _check_range(rng, name: str, op: str):
    if rng is None:
        return None
    ok = isinstance(rng, (tuple, list)) and len(rng) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng
    )
    if not ok or not rng[1] > rng[0]:
        raise ValueError(f"itk_odereg.{op}(): '{name}' must be None or a pair (low, high) with high > low, got {rng!r}")
    return float(rng[0]), float(rng[1])


def _normalize(x: torch.Tensor, rng: Tuple[float, float]) -> torch.Tensor:
    lo, hi = rng
    if not hi > lo:  # constant image: everything in the first intensity bin
        return torch.zeros_like(x) + 0.0 * x
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    # p log p with 0 log 0 = 0 and a finite gradient at 0
    return p * torch.log(p.clamp_min(1e-300))


def _check_mi_options(bins, samples, percentiles, fixed_range, moving_range, op: str):
    """Validate the options of :func:`mutual_information_loss` (in the order its docstring lists
    them); returns (percentiles, fixed_range, moving_range) as floats (ranges None when not given)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 8:
        raise ValueError(f"itk_odereg.{op}(): 'bins' must be an int >= 8, got {bins!r}")
    if samples is not None:
        is_int = isinstance(samples, int) and not isinstance(samples, bool)
        ok = (is_int and samples >= 1) or (isinstance(samples, float) and 0.0 < samples <= 1.0)
        if not ok:
            raise ValueError(
                f"itk_odereg.{op}(): 'samples' must be None, an int >= 1 or a float fraction in (0, 1], got {samples!r}"
            )
    ok = isinstance(percentiles, (tuple, list)) and len(percentiles) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in percentiles
    )
    if not ok or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise ValueError(
            f"itk_odereg.{op}(): 'percentiles' must be a pair (low, high) with 0 <= low < high <= 100, "
            f"got {percentiles!r}"
        )
    percentiles = (float(percentiles[0]), float(percentiles[1]))
    return percentiles, _check_range(fixed_range, "fixed_range", op), _check_range(moving_range, "moving_range", op)


def _sample_voxels(fixed_i: torch.Tensor, moving_i: torch.Tensor, mask_i: Optional[torch.Tensor], i: int,
                   samples, generator: Optional[torch.Generator], op: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The voxels of batch element ``i`` that enter the histogram: ([C, K] fixed, [C, K] moving).

    ``fixed_i``, ``moving_i``: [C, *S]; ``mask_i``: None or [1, *S] (the voxels inside).
    With ``samples`` (int: a count; float: a fraction of the masked voxels), K voxels drawn
    uniformly with replacement by one ``torch.randint`` call on ``generator``.
    """
    n_chan = fixed_i.shape[0]
    f_i = fixed_i.reshape(n_chan, -1)
    m_i = moving_i.reshape(n_chan, -1)
    idx = None
    if mask_i is not None:
        idx = torch.nonzero(mask_i.reshape(-1), as_tuple=True)[0]
        if idx.numel() == 0:
            raise ValueError(f"itk_odereg.{op}(): 'mask' is empty for batch element {i}")
    count = f_i.shape[1] if idx is None else idx.numel()
    if samples is not None:
        k = samples if isinstance(samples, int) else max(1, int(round(samples * count)))
        pick = torch.randint(count, (k,), generator=generator, device=fixed_i.device)
        idx = pick if idx is None else idx[pick]
    if idx is not None:
        f_i = f_i.index_select(1, idx)
        m_i = m_i.index_select(1, idx)
    return f_i, m_i


def _channel_mi(fs: torch.Tensor, ms: torch.Tensor, bins: int, percentiles: Tuple[float, float],
                fixed_range: Optional[Tuple[float, float]], moving_range: Optional[Tuple[float, float]],
                normalized: bool) -> torch.Tensor:
    """``-MI`` (nats) or ``-NMI`` of one channel's samples ``fs``, ``ms`` [K]: each mapped to
    [0, 1] by its range (given, or its ``percentiles``), then the Parzen joint histogram."""
    rf = fixed_range if fixed_range is not None else robust_range(fs, percentiles)
    rm = moving_range if moving_range is not None else robust_range(ms, percentiles)
    hist = _ParzenJointHistogram.apply(_normalize(fs, rf), _normalize(ms, rm), bins)
    p = hist / fs.shape[0]
    h_fm = -_xlogx(p).sum()
    h_f = -_xlogx(p.sum(1)).sum()
    h_m = -_xlogx(p.sum(0)).sum()
    if normalized:
        return -(h_f + h_m) / h_fm.clamp_min(1e-12)
    return h_fm - h_f - h_m


def mutual_information_loss(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    bins: int = 32,
    mask: Optional[torch.Tensor] = None,
    *,
    samples: Optional[Union[int, float]] = None,
    generator: Optional[torch.Generator] = None,
    normalized: bool = False,
    percentiles: Tuple[float, float] = (0.5, 99.5),
    fixed_range: Optional[Tuple[float, float]] = None,
    moving_range: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """Mattes mutual information with cubic B-spline Parzen windows; returns ``-MI`` (or ``-NMI``).

    Steps, per batch element and channel:

    1. Voxels: all of them, or those inside ``mask``; with ``samples``, a
       random subset drawn uniformly *with replacement* (fresh each call, from
       ``generator``), as in ITK's/elastix's random samplers.
    2. Intensities are mapped to [0, 1] by a range (low, high): ``fixed_range``
       / ``moving_range`` when given, otherwise the ``percentiles`` of the
       (masked, sampled) voxels (nearest rank, from at most 2^16 evenly
       strided ones). Values outside are clipped (they then get no
       gradient). The range is a constant for differentiation. Prefer passing ``moving_range`` computed
       once on the *unwarped* moving image (as ITK does): the range of the
       warped image changes a little from one iteration to the next.
    3. Each sample adds a cubic B-spline (Parzen) kernel one bin wide to the
       joint histogram, at bin coordinate ``2 + t * (bins - 5)`` (2 bins of
       padding on each side, as in ITK's Mattes metric, so every sample's
       weights sum to 1). The kernel is C2, so the histogram, and hence MI,
       is differentiable with respect to both intensities.
    4. ``MI = sum p log(p / (p_f p_m))`` over the normalized joint histogram
       p and its marginals (nats). With ``normalized``,
       ``NMI = (H_f + H_m) / H_fm`` in [1, 2] (Studholme) instead.

    MI depends only on the joint distribution, not on which intensities match
    which, so it works across contrasts (e.g. T1 against T2, where the tissue
    ordering is inverted). The loss is the mean over batch and channels of
    ``-MI`` (or ``-NMI``): lower is better, and it is negative, not 0, at its
    best.

    Args:
        fixed: Tensor[N, C, D, H, W] or Tensor[N, C, H, W], float32/float64.
        moving: warped moving image, same shape, dtype and device.
        bins: histogram bins per image (>= 8), including 4 bins of padding;
            32 is ITK's and ANTs' usual choice.
        mask: optional Tensor[N or 1, 1, *S]; only mask voxels are used.
        samples: None (all voxels), a number of samples per image (int >= 1),
            or a fraction of the (masked) voxels (float in (0, 1]).
        generator: torch.Generator for the sampling (on the images' device);
            None uses the global RNG.
        normalized: return ``-NMI`` instead of ``-MI``.
        percentiles: (low, high) percentiles, in [0, 100], defining the
            intensity range of an image when its range is not given.
            (0, 100) is min/max. The default clips the extreme 0.5% on each
            side, like ANTs' usual winsorization.
        fixed_range: optional (low, high) intensity range of the fixed image.
        moving_range: optional (low, high) intensity range of the moving image.

    Returns:
        0-dim tensor (``-MI`` in nats, or ``-NMI``), differentiable with
        respect to ``fixed`` and ``moving`` at the sampled voxels.

    Raises:
        ValueError: bad shapes, ``bins``, ``samples``, ``percentiles`` or ranges.
    """
    op = "mutual_information_loss"
    _check_pair(fixed, moving, op)
    percentiles, fixed_range, moving_range = _check_mi_options(bins, samples, percentiles, fixed_range, moving_range, op)
    m = _prepare_mask(mask, fixed, op)
    values = []
    for i in range(fixed.shape[0]):
        f_i, m_i = _sample_voxels(fixed[i], moving[i], None if m is None else m[i], i, samples, generator, op)
        for c in range(fixed.shape[1]):
            values.append(_channel_mi(f_i[c], m_i[c], bins, percentiles, fixed_range, moving_range, normalized))
    return torch.stack(values).mean().to(fixed.dtype)
