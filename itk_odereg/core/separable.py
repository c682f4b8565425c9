"""Separable linear operators on grids: Gaussian smoothing and corner-aligned linear resampling.

Both are products of one small dense matrix per axis. Applied with ``matmul``
they run as a few large BLAS calls, forward and backward, where
``F.interpolate`` and convolutions are many small, mostly single-threaded
kernels on CPU (``benchmarks/accuracy.py --profile`` showed the trilinear
upsampling's backward as the largest single cost of a NODEO iteration). Two
operators on the same axes compose into one matrix per axis, so a Gaussian
smoothing followed by an upsampling costs a single pass.

Conventions: fields are Tensor[N, C, *S] in tensor axis order ((z, y, x) in
3D). Resampling is corner-aligned: the first and last samples of an axis sit
on the first and last samples of the other grid, as
``F.interpolate(..., align_corners=True)`` and
:mod:`itk_odereg.registration.pyramid` define it.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

__all__ = ["gaussian_kernel", "gaussian_matrix", "linear_resampling_matrix", "apply_separable", "gaussian_smooth"]


def gaussian_kernel(sigma: float, radius: int, dtype: torch.dtype = torch.float32, normalize: bool = True,
                    max_exponent: Optional[float] = None) -> torch.Tensor:
    """[2 radius + 1] sampled Gaussian ``exp(-x^2 / (2 sigma^2))`` at the integer offsets
    ``x = -radius .. radius`` (voxels; ``sigma`` in voxels), computed in ``dtype``.

    Args:
        sigma: standard deviation, voxels (> 0).
        radius: half-width, samples.
        dtype: floating dtype of the computation and of the result.
        normalize: divide by the sum (the kernel sums to 1).
        max_exponent: None, or cut the samples whose exponent ``x^2 / (2 sigma^2)`` is
            not below it to exact zeros (before normalizing).

    TorchScript-compatible. The MS-ODENet dense velocity smooths with the float32,
    normalized kernel; :func:`gaussian_matrix` is built from the float64, unnormalized,
    cut one.
    """
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    exponent = 0.5 * (x / sigma) ** 2
    if max_exponent is None:
        kernel = torch.exp(-exponent)
    else:
        kernel = torch.where(exponent < max_exponent, torch.exp(-exponent), torch.zeros_like(exponent))
    if normalize:
        return kernel / kernel.sum()
    return kernel


@functools.lru_cache(maxsize=256)
def _gaussian_matrix64(size: int, sigma: float) -> torch.Tensor:
    # Beyond ~7.4 sigma (weight < 1e-12) the kernel is cut to exact zeros: the tail would
    # otherwise hold float32 denormals, which make every product with the matrix tens of
    # times slower on CPU, for a change of at most 1e-12 relative.
    kernel = gaussian_kernel(sigma, size - 1, torch.float64, normalize=False, max_exponent=27.6)
    x = torch.arange(size)
    # Row i, column j holds the kernel at offset i - j (index i - j + size - 1 of the kernel).
    weights = kernel[x[:, None] - x[None, :] + (size - 1)]
    return weights / weights.sum(1, keepdim=True)


@functools.lru_cache(maxsize=256)
def _linear_matrix64(size_in: int, size_out: int) -> torch.Tensor:
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    if size_in == 1:
        return matrix.add_(1.0)
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    position = torch.arange(size_out, dtype=torch.float64) * scale
    left = position.floor().clamp(max=size_in - 2).long()
    weight = position - left
    rows = torch.arange(size_out)
    matrix[rows, left] = 1.0 - weight
    matrix[rows, left + 1] += weight
    return matrix


# Matrices are cached per dtype and device too: building and copying them is per-op overhead that
# a NODEO iteration would otherwise pay dozens of times. Callers must not modify them in place.
@functools.lru_cache(maxsize=512)
def _gaussian_matrix(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _gaussian_matrix64(size, sigma).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=512)
def _linear_matrix(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _linear_matrix64(size_in, size_out).to(dtype=dtype, device=device)


def gaussian_matrix(size: int, sigma_voxels: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """[size, size] Gaussian smoothing along one axis (sigma in voxels), rows renormalized.

    Near the border each row is renormalized over the samples inside the axis
    (no padding assumption), so a constant field stays constant. The returned
    tensor is shared (cached): do not modify it in place.
    """
    return _gaussian_matrix(int(size), float(sigma_voxels), dtype, torch.device(device or "cpu"))


def linear_resampling_matrix(size_in: int, size_out: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """[size_out, size_in] corner-aligned linear interpolation along one axis (align_corners=True); shared, read-only."""
    return _linear_matrix(int(size_in), int(size_out), dtype, torch.device(device or "cpu"))


def apply_separable(field: torch.Tensor, matrices: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """Apply one matrix per spatial axis: ``out[..., i, ...] = sum_j M[i, j] field[..., j, ...]``.

    Args:
        field: Tensor[N, C, *S].
        matrices: one [S_out, S_in] matrix per spatial axis (tensor order), or None
            to leave that axis as it is; same dtype and device as ``field``.

    Returns:
        Tensor[N, C, *S_out], differentiable (the backward is the transposed products).
    """
    out = field
    ndim = field.dim() - 2
    if len(matrices) != ndim:
        raise ValueError(f"apply_separable(): {len(matrices)} matrices for a field with {ndim} spatial axes")
    for axis, matrix in enumerate(matrices):
        if matrix is None:
            continue
        dim = 2 + axis
        shape = out.shape
        if matrix.shape[1] != shape[dim]:
            raise ValueError(f"apply_separable(): axis {axis} has {shape[dim]} samples but its matrix is "
                             f"{list(matrix.shape)}")
        if dim == out.dim() - 1:
            out = torch.matmul(out, matrix.T)
        else:
            lead = 1
            for s in shape[:dim]:
                lead *= s
            trail = 1
            for s in shape[dim + 1:]:
                trail *= s
            folded = torch.matmul(matrix, out.reshape(lead, shape[dim], trail))
            out = folded.view(*shape[:dim], matrix.shape[0], *shape[dim + 1:])
    return out


def gaussian_matrices(shape: Sequence[int], sigma_voxels: Sequence[float], dtype, device) -> list:
    """Per-axis Gaussian matrices of :func:`gaussian_smooth` (None where sigma is 0 or the axis has 1 sample)."""
    return [gaussian_matrix(n, s, dtype, device) if s > 0 and n >= 2 else None for n, s in zip(shape, sigma_voxels)]


def resampling_matrices(shape_in: Sequence[int], shape_out: Sequence[int], dtype, device) -> list:
    """Per-axis corner-aligned linear resampling matrices (None where the sizes agree)."""
    return [linear_resampling_matrix(a, b, dtype, device) if a != b else None for a, b in zip(shape_in, shape_out)]


def compose(outer: Sequence[Optional[torch.Tensor]], inner: Sequence[Optional[torch.Tensor]]) -> list:
    """Per-axis products ``outer @ inner`` (``inner`` applied first); None is the identity."""
    out = []
    for a, b in zip(outer, inner):
        out.append(b if a is None else a if b is None else a @ b)
    return out


def gaussian_smooth(field: torch.Tensor, sigma_voxels: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian smoothing of every channel of [N, C, *S] (sigma per axis in voxels; 0: untouched).

    Near the border the kernel is renormalized over the samples inside, so
    constants are preserved.
    """
    return apply_separable(field, gaussian_matrices(field.shape[2:], sigma_voxels, field.dtype, field.device))
