"""Input checks used by the fake (meta) kernels and the pure-PyTorch fallback.

They mirror the C++ checks in ``csrc/ops/common`` so that ``torch.compile``
and ``torch.export`` tracing, and machines without the compiled library, give
the same clear errors as eager calls into the kernels.
"""
from __future__ import annotations

from typing import Sequence

import torch

_FLOATING = (torch.float32, torch.float64)


def check_floating(t: torch.Tensor, op: str, name: str) -> None:
    torch._check(
        t.dtype in _FLOATING, lambda: f"itk_odereg.{op}(): '{name}' must be float32 or float64, got {t.dtype}"
    )


def check_same_dtype_device(a: torch.Tensor, name_a: str, b: torch.Tensor, name_b: str, op: str) -> None:
    torch._check(
        a.dtype == b.dtype,
        lambda: f"itk_odereg.{op}(): '{name_a}' ({a.dtype}) and '{name_b}' ({b.dtype}) must have the same dtype",
    )
    torch._check(
        a.device == b.device,
        lambda: f"itk_odereg.{op}(): '{name_a}' ({a.device}) and '{name_b}' ({b.device}) must be on the same device",
    )


def check_displacement(u: torch.Tensor, op: str, name: str = "displacement", min_size: int = 1) -> int:
    check_floating(u, op, name)
    ndim = u.dim() - 2
    torch._check(
        ndim in (2, 3),
        lambda: f"itk_odereg.{op}(): '{name}' must have shape [N, 2, H, W] (2D) or [N, 3, D, H, W] (3D), "
        f"got {list(u.shape)}",
    )
    torch._check(
        u.shape[1] == ndim,
        lambda: f"itk_odereg.{op}(): '{name}' must have {ndim} channels (one per spatial dimension, tensor order) "
        f"for {ndim}D, got shape {list(u.shape)}",
    )
    torch._check(u.shape[0] >= 1, lambda: f"itk_odereg.{op}(): '{name}' must have batch size N >= 1, got {list(u.shape)}")
    for size in u.shape[2:]:
        torch._check(
            size >= min_size,
            lambda: f"itk_odereg.{op}(): '{name}' must have every spatial size >= {min_size}, got shape {list(u.shape)}",
        )
    return ndim


def check_padding(padding: str, op: str) -> None:
    torch._check(
        padding in ("zeros", "border"),
        lambda: f"itk_odereg.{op}(): 'padding' must be \"zeros\" or \"border\", got \"{padding}\"",
    )


def check_image_and_displacement(image: torch.Tensor, displacement: torch.Tensor, op: str) -> None:
    check_image_like_displacement(image, displacement, op)
    torch._check(
        image.shape[2:] == displacement.shape[2:],
        lambda: f"itk_odereg.{op}(): 'image' and 'displacement' must have the same spatial size, got "
        f"{list(image.shape)} and {list(displacement.shape)}",
    )


def check_aligned_image_and_displacement(image: torch.Tensor, displacement: torch.Tensor, op: str) -> None:
    """sample_at: each axis equal, or at least 2 samples on both grids (a single sample has no extent to align)."""
    check_image_like_displacement(image, displacement, op)
    for d, (a, b) in enumerate(zip(image.shape[2:], displacement.shape[2:])):
        torch._check(
            a == b or (a >= 2 and b >= 2),
            lambda: f"itk_odereg.{op}(): spatial dim {d} of 'image' {list(image.shape)} and 'displacement' "
            f"{list(displacement.shape)} must be equal, or both at least 2 (corner-aligned grids of one box)",
        )


def check_image_like_displacement(image: torch.Tensor, displacement: torch.Tensor, op: str) -> None:
    check_floating(image, op, "image")
    ndim = check_displacement(displacement, op)
    check_same_dtype_device(image, "image", displacement, "displacement", op)
    torch._check(
        image.dim() == ndim + 2,
        lambda: f"itk_odereg.{op}(): 'image' must have shape [N, C, *S] with {ndim} spatial dims to match "
        f"'displacement' {list(displacement.shape)}, got {list(image.shape)}",
    )
    torch._check(
        image.shape[0] == displacement.shape[0],
        lambda: f"itk_odereg.{op}(): 'image' and 'displacement' must have the same batch size N, got "
        f"{list(image.shape)} and {list(displacement.shape)}",
    )
    torch._check(image.shape[1] >= 1, lambda: f"itk_odereg.{op}(): 'image' must have at least one channel")


def bspline_control_size(dense_size: int, spacing: int) -> int:
    return (dense_size - 1) // spacing + 4


def check_bspline_args(control: torch.Tensor, shape: Sequence[int], spacing: Sequence[int], op: str) -> None:
    check_floating(control, op, "control")
    ndim = len(shape)
    torch._check(ndim in (2, 3), lambda: f"itk_odereg.{op}(): 'shape' must list 2 or 3 spatial sizes, got {list(shape)}")
    torch._check(
        len(spacing) == ndim,
        lambda: f"itk_odereg.{op}(): 'control_spacing' must have one integer per spatial dim ({ndim}), got {list(spacing)}",
    )
    torch._check(
        control.dim() == ndim + 2,
        lambda: f"itk_odereg.{op}(): 'control' must have shape [N, C, *G] with {ndim} spatial dims, "
        f"got {list(control.shape)}",
    )
    torch._check(
        control.shape[0] >= 1 and control.shape[1] >= 1,
        lambda: f"itk_odereg.{op}(): 'control' must have N >= 1 and C >= 1, got {list(control.shape)}",
    )
    for s, h in zip(shape, spacing):
        torch._check(h >= 1, lambda: f"itk_odereg.{op}(): 'control_spacing' must be positive integers, got {list(spacing)}")
        torch._check(s >= 1, lambda: f"itk_odereg.{op}(): 'shape' must be positive, got {list(shape)}")
    expected = [bspline_control_size(s, h) for s, h in zip(shape, spacing)]
    torch._check(
        list(control.shape[2:]) == expected,
        lambda: f"itk_odereg.{op}(): 'control' has control grid {list(control.shape[2:])} but dense shape "
        f"{list(shape)} with control_spacing {list(spacing)} needs {expected} "
        "(floor((size - 1) / spacing) + 4 per axis)",
    )


def check_spacing(spacing, ndim: int, op: str) -> None:
    if spacing is None:
        return
    torch._check(
        len(spacing) == ndim,
        lambda: f"itk_odereg.{op}(): 'spacing' must have {ndim} values (mm per voxel, tensor order), got {list(spacing)}",
    )
    for h in spacing:
        torch._check(
            h > 0 and h != float("inf"), lambda: f"itk_odereg.{op}(): 'spacing' must be finite and positive, got {list(spacing)}"
        )


def check_resample_args(x: torch.Tensor, shape: Sequence[int], op: str, name: str) -> int:
    """Mirror of ``check_resample_args`` in ``csrc/ops/common/linear_resample.h``."""
    check_floating(x, op, name)
    ndim = x.dim() - 2
    torch._check(
        ndim in (2, 3),
        lambda: f"itk_odereg.{op}(): '{name}' must have shape [N, C, H, W] (2D) or [N, C, D, H, W] (3D), "
        f"got {list(x.shape)}",
    )
    torch._check(
        len(shape) == ndim,
        lambda: f"itk_odereg.{op}(): 'shape' must list one size per spatial dim of '{name}' ({ndim}), got {list(shape)}",
    )
    for size in x.shape:
        torch._check(size >= 1, lambda: f"itk_odereg.{op}(): '{name}' must have no empty dim, got {list(x.shape)}")
    for size in shape:
        torch._check(size >= 1, lambda: f"itk_odereg.{op}(): 'shape' must be positive, got {list(shape)}")
    return ndim


TANH_MLP_MAX_CHANNELS = 32
TANH_MLP_MAX_LAYERS = 8


def check_tanh_mlp_args(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                        op: str) -> int:
    """Mirror of ``check_tanh_mlp_args`` in ``csrc/ops/common/tanh_mlp.h``; returns the number of layers."""
    check_floating(x, op, "input")
    torch._check(x.dim() == 2, lambda: f"itk_odereg.{op}(): 'input' must have shape [channels, points], got {list(x.shape)}")
    layers = len(weights)
    torch._check(1 <= layers <= TANH_MLP_MAX_LAYERS,
                 lambda: f"itk_odereg.{op}(): 'weights' must hold 1 to {TANH_MLP_MAX_LAYERS} layers, got {layers}")
    torch._check(len(biases) == layers, lambda: f"itk_odereg.{op}(): 'biases' must hold one vector per layer of "
                 f"'weights' ({layers}), got {len(biases)}")
    width = x.shape[0]
    torch._check(1 <= width <= TANH_MLP_MAX_CHANNELS, lambda: f"itk_odereg.{op}(): 'input' must have 1 to "
                 f"{TANH_MLP_MAX_CHANNELS} channels, got shape {list(x.shape)}")
    for index, (w, b) in enumerate(zip(weights, biases)):
        check_floating(w, op, "weights")
        check_floating(b, op, "biases")
        check_same_dtype_device(x, "input", w, "weights", op)
        check_same_dtype_device(x, "input", b, "biases", op)
        torch._check(w.dim() == 2 and w.shape[1] == width and 1 <= w.shape[0] <= TANH_MLP_MAX_CHANNELS,
                     lambda: f"itk_odereg.{op}(): 'weights' of layer {index} must have shape [out, {width}] with "
                     f"1 <= out <= {TANH_MLP_MAX_CHANNELS}, got {list(w.shape)}")
        torch._check(b.dim() == 1 and b.shape[0] == w.shape[0], lambda: f"itk_odereg.{op}(): 'biases' of layer "
                     f"{index} must have shape [{w.shape[0]}], got {list(b.shape)}")
        width = w.shape[0]
    return layers
