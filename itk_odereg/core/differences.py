"""Finite differences and normalized gradient fields of images on a grid (TorchScript).

The one home of these primitives: the NGF loss (:mod:`itk_odereg.losses.ngf`) and the
MS-ODENet features and rigid search (:mod:`itk_odereg.msodenet`) call them, each with the
boundary variant it needs. Every function here compiles with ``torch.jit.script`` (typed
arguments, string options), because the MS-ODENet modules that call them are exported as
TorchScript.

Conventions: images are Tensor[N, C, *S] with 1 to 3 spatial axes in tensor order ((z, y, x)
in 3D). Differences are per voxel, or per mm when ``spacing`` (mm per voxel, tensor order)
is given. Boundary variants, at the first and last sample of an axis:

* ``"one_sided"``: the one-sided difference ``x[1] - x[0]`` (``torch.gradient`` with
  ``edge_order=1``); an axis with a single sample has a zero difference. What the NGF
  loss uses.
* ``"replicate_half"``: the edge sample replicated, then the central formula, which is
  half the one-sided difference ``(x[1] - x[0]) / 2``. What the shipped MS-ODENet
  weights were trained on (1 to 3 spatial axes).

Inside, both are the central difference ``(x[i + 1] - x[i - 1]) / 2``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = ["BOUNDARIES", "central_differences", "image_gradient", "normalized_gradient",
           "one_sided_differences_adjoint"]

#: the boundary variants of :func:`central_differences`.
BOUNDARIES = ("one_sided", "replicate_half")


def _one_sided_differences(x: torch.Tensor, spacing: Optional[List[float]]) -> List[torch.Tensor]:
    """Central differences inside, one-sided at the faces (``torch.gradient``, edge order 1);
    zeros along an axis with fewer than 2 samples. ``spacing``: mm per voxel, or None (voxels).

    Without autograd, the same operations as ``torch.gradient`` (a difference, then a division
    by 2 h inside and by h at the faces), so the same bits, are written into one output per
    axis: a third of its time on CPU, where it concatenates the faces onto the interior.
    """
    grads: List[torch.Tensor] = []
    differentiable = x.requires_grad and torch.is_grad_enabled()
    for k in range(x.dim() - 2):
        d = 2 + k
        length = int(x.shape[d])
        if length < 2:
            grads.append(torch.zeros_like(x))
            continue
        h = 1.0 if spacing is None else spacing[k]
        if differentiable:
            grads.append(torch.gradient(x, spacing=h, dim=d, edge_order=1)[0])
            continue
        g = torch.empty_like(x)
        torch.sub(x.narrow(d, 2, length - 2), x.narrow(d, 0, length - 2), out=g.narrow(d, 1, length - 2))
        g.narrow(d, 1, length - 2).div_(2.0 * h)
        torch.sub(x.narrow(d, 1, 1), x.narrow(d, 0, 1), out=g.narrow(d, 0, 1))
        torch.sub(x.narrow(d, length - 1, 1), x.narrow(d, length - 2, 1), out=g.narrow(d, length - 1, 1))
        g.narrow(d, 0, 1).div_(h)
        g.narrow(d, length - 1, 1).div_(h)
        grads.append(g)
    return grads


def one_sided_differences_adjoint(grads: List[torch.Tensor], spacing: Optional[List[float]] = None) -> torch.Tensor:
    """The adjoint (transpose) of ``central_differences(x, spacing, "one_sided")``:
    ``sum_k D_k^T grads[k]``, shaped like one of ``grads``.

    It is the gradient of ``sum_k <grads[k], D_k x>`` with respect to ``x``, what a loss of
    the differences passes back to the image (the NGF loss's hand-written backward). Per axis
    of length L >= 2, with H = G / (2 h) inside and G / h at the two faces::

        out[j] = H[j - 1] - H[j + 1]      (terms outside 0 .. L - 1 dropped)
        out[0] -= H[0],  out[L - 1] += H[L - 1]

    An axis of one sample contributes nothing (its differences are zero). ``grads`` are not
    modified.
    """
    out = torch.zeros_like(grads[0])
    for k in range(len(grads)):
        d = 2 + k
        length = int(out.shape[d])
        if length < 2:
            continue
        h = 1.0 if spacing is None else spacing[k]
        g = grads[k]
        # H = G / (2 h) inside, G / h at the faces: the two shifted sums take the interior
        # weight, and the faces' other half is added to the four face slices.
        inner, face = 0.5 / h, 1.0 / h
        out.narrow(d, 1, length - 1).add_(g.narrow(d, 0, length - 1), alpha=inner)
        out.narrow(d, 0, length - 1).sub_(g.narrow(d, 1, length - 1), alpha=inner)
        out.narrow(d, 1, 1).add_(g.narrow(d, 0, 1), alpha=inner)
        out.narrow(d, 0, 1).sub_(g.narrow(d, 0, 1), alpha=face)
        out.narrow(d, length - 2, 1).sub_(g.narrow(d, length - 1, 1), alpha=inner)
        out.narrow(d, length - 1, 1).add_(g.narrow(d, length - 1, 1), alpha=face)
    return out


def _replicate_half_differences(x: torch.Tensor, spacing: Optional[List[float]]) -> List[torch.Tensor]:
    """``0.5 * (x[i + 1] - x[i - 1])`` with the edge samples replicated (half the one-sided
    difference at the faces; zero along an axis of one sample), divided by the spacing when given."""
    nd = x.dim() - 2
    padded = F.pad(x, [1, 1] * nd, mode="replicate")
    grads: List[torch.Tensor] = []
    for k in range(nd):
        hi = padded
        lo = padded
        for j in range(nd):
            size = int(x.shape[2 + j])
            if j == k:
                hi = hi.narrow(2 + j, 2, size)
                lo = lo.narrow(2 + j, 0, size)
            else:
                hi = hi.narrow(2 + j, 1, size)
                lo = lo.narrow(2 + j, 1, size)
        g = 0.5 * (hi - lo)
        if spacing is not None:
            g = g / spacing[k]
        grads.append(g)
    return grads


def central_differences(x: torch.Tensor, spacing: Optional[List[float]] = None,
                        boundary: str = "one_sided") -> List[torch.Tensor]:
    """Central differences of ``x`` [N, C, *S] along each spatial axis: a list of one
    tensor per axis (tensor order), each shaped like ``x``.

    Args:
        x: Tensor[N, C, *S], floating point.
        spacing: None (differences per voxel) or the voxel spacing per spatial axis
            (mm, tensor order; differences per mm).
        boundary: ``"one_sided"`` or ``"replicate_half"`` (see the module docstring).

    Raises:
        ValueError: unknown ``boundary``, or ``spacing`` of the wrong length.
    """
    nd = x.dim() - 2
    if spacing is not None and len(spacing) != nd:
        raise ValueError("central_differences(): 'spacing' has " + str(len(spacing)) + " entries for "
                         + str(nd) + " spatial axes")
    if boundary == "one_sided":
        return _one_sided_differences(x, spacing)
    if boundary == "replicate_half":
        return _replicate_half_differences(x, spacing)
    raise ValueError('central_differences(): invalid boundary "' + boundary
                     + '". Must be "one_sided" or "replicate_half"')


def image_gradient(x: torch.Tensor, spacing: Optional[List[float]] = None,
                   boundary: str = "one_sided") -> torch.Tensor:
    """The gradient of a single-channel image ``x`` [N, 1, *S] as one tensor [N, nd, *S]
    (component k = :func:`central_differences` along tensor axis k)."""
    if x.shape[1] != 1:
        raise ValueError("image_gradient(): the image must have one channel, got " + str(int(x.shape[1])))
    return torch.cat(central_differences(x, spacing, boundary), 1)


def normalized_gradient(x: torch.Tensor, edge_epsilon: float, spacing: Optional[List[float]] = None,
                        boundary: str = "one_sided") -> torch.Tensor:
    """Normalized gradient field ``grad I / sqrt(|grad I|^2 + eps^2)`` [N, nd, *S] of a
    single-channel image [N, 1, *S] (Haber & Modersitzki 2006).

    ``edge_epsilon`` is the gradient magnitude (intensity per voxel, or per mm with
    ``spacing``) below which an edge fades out: |n| is about 1 on edges much stronger
    than it and about |grad I| / eps on weaker ones. The gradient is :func:`image_gradient`.
    """
    g = image_gradient(x, spacing, boundary)
    return g / torch.sqrt(g.square().sum(1, keepdim=True) + edge_epsilon**2)
