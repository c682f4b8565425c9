"""Pure-PyTorch versions of the ``itk_odereg`` ops.

They define what the compiled kernels compute, serve as the test oracle, and
are the fallback when the compiled library is missing. They are written for
clarity: ``warp`` goes through ``grid_sample``, ``bspline_to_dense`` evaluates
the explicit cubic B-spline basis, and the regularizers use
``torch.gradient``-style finite differences. Conventions are those of
:mod:`itk_odereg.ops`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "warp",
    "sample_at",
    "box_sum_",
    "bspline_basis_matrix",
    "bspline_to_dense",
    "resample_linear",
    "first_derivative",
    "second_derivative",
    "diffusion_energy",
    "bending_energy",
    "jacobian_determinant",
    "jacobian_penalty",
]


def identity_grid(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Voxel indices [1, d, *shape] in tensor order (z, y, x)."""
    axes = [torch.arange(s, dtype=dtype, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def warp(image: torch.Tensor, displacement: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """``grid_sample(align_corners=True)`` on the normalized (x, y[, z]) grid of p + u(p)."""
    shape = displacement.shape[2:]
    ndim = len(shape)
    position = identity_grid(shape, displacement.dtype, displacement.device) + displacement
    # grid_sample cannot express a size-1 axis (align_corners maps it to index 0
    # whatever the coordinate): sample at index 0 and apply that axis's linear
    # weight, 1 - |x| with zero padding (1 with border padding), explicitly.
    normalized = [
        2 * position[:, d] / (shape[d] - 1) - 1 if shape[d] > 1 else torch.zeros_like(position[:, d])
        for d in range(ndim)
    ]
    grid = torch.stack(normalized[::-1], dim=-1)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=True)
    if padding == "zeros":
        for d in range(ndim):
            if shape[d] == 1:
                out = out * torch.relu(1 - position[:, d].abs())[:, None]
    return out


def sample_at(image: torch.Tensor, displacement: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """``warp`` from another corner-aligned grid: position p + u(p) of the displacement's grid is
    index (p + u(p)) * (S' - 1) / (S - 1) of the image's. ``warp`` above already computes exactly
    that: it normalizes positions by the displacement's grid, and ``grid_sample(align_corners=True)``
    maps normalized coordinates onto the image's own size (a single-sample axis is one on both grids)."""
    return warp(image, displacement, padding)


def cubic_bspline(u: torch.Tensor) -> torch.Tensor:
    """Centred uniform cubic B-spline B(u), support (-2, 2)."""
    a = u.abs()
    inner = (4 - 6 * a**2 + 3 * a**3) / 6
    outer = (2 - a) ** 3 / 6
    return torch.where(a < 1, inner, torch.where(a < 2, outer, torch.zeros_like(a)))


def resample_linear(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(mode="bilinear" | "trilinear", align_corners=True)`` to ``shape``; a copy when
    the size is unchanged (the op never returns its input)."""
    shape = [int(s) for s in shape]
    if list(x.shape[2:]) == shape:
        return x.clone()
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=shape, mode=mode, align_corners=True)


def tanh_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """``tanh(W x + b[:, None])`` layer after layer on [channels, points], the last layer included."""
    for w, b in zip(weights, biases):
        x = torch.tanh(torch.addmm(b[:, None], w, x))
    return x


def bspline_basis_matrix(size: int, spacing: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """[size, G] matrix of B((x - (k - 1) * spacing) / spacing): control point k sits at voxel (k - 1) * spacing."""
    control = (size - 1) // spacing + 4
    x = torch.arange(size, dtype=dtype, device=device)[:, None]
    k = torch.arange(control, dtype=dtype, device=device)[None, :]
    return cubic_bspline((x - (k - 1) * spacing) / spacing)


def bspline_to_dense(control: torch.Tensor, shape: Sequence[int], control_spacing: Sequence[int]) -> torch.Tensor:
    """Tensor-product evaluation with the explicit basis matrices, one axis at a time."""
    out = control
    for d, (size, spacing) in enumerate(zip(shape, control_spacing)):
        basis = bspline_basis_matrix(size, spacing, control.dtype, control.device)
        out = torch.movedim(torch.tensordot(basis, torch.movedim(out, d + 2, 0), dims=1), 0, d + 2)
    return out


def first_derivative(f: torch.Tensor, dim: int) -> torch.Tensor:
    """Central differences inside, one-sided on the border (torch.gradient, edge_order=1)."""
    return torch.gradient(f, dim=dim, edge_order=1)[0]


def second_derivative(f: torch.Tensor, dim: int) -> torch.Tensor:
    """Three-point second difference; border samples repeat the nearest interior one."""
    n = f.shape[dim]
    inner = f.narrow(dim, 0, n - 2) - 2 * f.narrow(dim, 1, n - 2) + f.narrow(dim, 2, n - 2)
    return torch.cat([inner.narrow(dim, 0, 1), inner, inner.narrow(dim, n - 3, 1)], dim=dim)


def _spacing(spacing, ndim):
    return [1.0] * ndim if spacing is None else [float(s) for s in spacing]


def diffusion_energy(displacement: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    ndim = displacement.shape[1]
    h = _spacing(spacing, ndim)
    total = displacement.new_zeros(())
    for i in range(ndim):
        for j in range(ndim):
            d = first_derivative(displacement[:, i], j + 1) * (h[i] / h[j])
            total = total + (d**2).mean()
    return total


def bending_energy(displacement: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    ndim = displacement.shape[1]
    h = _spacing(spacing, ndim)
    total = displacement.new_zeros(())
    for i in range(ndim):
        ui = displacement[:, i]
        for a in range(ndim):
            d = second_derivative(ui, a + 1) * (h[i] / (h[a] * h[a]))
            total = total + (d**2).mean()
            for b in range(a + 1, ndim):
                m = first_derivative(first_derivative(ui, b + 1), a + 1) * (h[i] / (h[a] * h[b]))
                total = total + 2 * (m**2).mean()
    return total


def jacobian_matrix(displacement: torch.Tensor) -> torch.Tensor:
    """[N, *S, d, d] Jacobian of x + u(x) in voxel units."""
    ndim = displacement.shape[1]
    rows = [torch.stack([first_derivative(displacement[:, i], j + 1) for j in range(ndim)], -1) for i in range(ndim)]
    jac = torch.stack(rows, -2)
    return jac + torch.eye(ndim, dtype=displacement.dtype, device=displacement.device)


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    return torch.linalg.det(jacobian_matrix(displacement))


def jacobian_penalty(displacement: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    return (torch.relu(threshold - jacobian_determinant(displacement)) ** 2).mean()


def _box_last_(x: torch.Tensor, r: int) -> None:
    """In place: windowed sums of half-width ``r`` along the last dim (cumulative-sum differences)."""
    d = x.dim() - 1
    length = x.shape[d]
    r = min(r, length - 1)
    if r == 0:
        return
    c = x.cumsum(d)
    x.narrow(d, 0, length - r).copy_(c.narrow(d, r, length - r))
    tail = x.narrow(d, length - r, r)
    tail.copy_(c.narrow(d, length - 1, 1).expand_as(tail))
    if length - r - 1 > 0:
        x.narrow(d, r + 1, length - r - 1).sub_(c.narrow(d, 0, length - r - 1))


def _box_running_(x: torch.Tensor, d: int, r: int) -> None:
    """In place: windowed sums of half-width ``r`` along dim ``d`` (not the last) by a running sum.

    Each step adds the slice entering the window and subtracts the one leaving it;
    the r + 1 most recent original slices are kept in a small ring buffer, so the
    extra memory is (r + 1) slices. Slices along a non-last dim are contiguous
    runs of at least one row, so every step streams memory.
    """
    length = x.shape[d]
    r = min(r, length - 1)
    if r == 0:
        return
    sl = x.unbind(d)  # views of the slices
    acc = x.narrow(d, 0, r + 1).sum(d)
    ring = [torch.empty_like(acc) for _ in range(r + 1)]
    for i in range(length):
        slot = ring[i % (r + 1)]
        if i > 0:
            if i + r < length:
                acc.add_(sl[i + r])
            if i - r - 1 >= 0:
                acc.sub_(slot)  # holds original slice i - r - 1
        if i + r + 1 < length:
            slot.copy_(sl[i])
        sl[i].copy_(acc)


def box_sum_(x: torch.Tensor, radii: Sequence[int]) -> torch.Tensor:
    """In place box sums (zero padding) over the last ``len(radii)`` dims of a contiguous ``x``; returns ``x``.

    Cumulative-sum differences along the last axis, running sums slice by slice
    along the others (extra memory: r + 1 slices). Equal to a convolution with a
    ones kernel of width 2 r + 1 and zero padding."""
    nd = len(radii)
    _box_last_(x, radii[-1])
    for k in range(nd - 1):
        _box_running_(x, x.dim() - nd + k, radii[k])
    return x
