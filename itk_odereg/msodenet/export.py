"""Export of the shipped MS-ODENet models: TorchScript (``.pt``) and ``torch.export`` (``.pt2``).

Both take ``forward(fixed, moving)`` with tensors [1, 1, D, H, W] on one grid (the
model's training resolution) and return the displacement [1, 3, D, H, W] in voxels,
fixed to moving, in the ops' convention; its parameters are frozen, so the output
does not require grad.

The TorchScript module is :class:`CheckedModel`: it refuses what the model cannot
register, with a message naming the input (another dimension or layout than
[1, 1, D, H, W], an axis under 8 voxels, different shapes, integer or complex
voxels, NaN or infinite voxels), casts floating inputs to float32 and maps each
image's 1st..99th percentile to [0, 1], as the engine does
(:func:`itk_odereg.core.intensity.normalize_intensity`), so raw intensities
(0 to 1000, say) give the same map as normalized ones. The ``.pt2`` program is
:class:`CheckedProgram`: specialized to one shape and to float32, which the program's own
guards check on every call ("Guard failed: moving.size()[4] == 81", "Tensor dtype
mismatch"); it refuses NaN or infinite voxels with a message naming the input (an assertion
in the graph, since ``torch.export`` cannot branch on the data) and normalizes its inputs as
the ``.pt`` module does. They call the ops as ``torch.ops.itk_odereg.*``: a process loads
them with ``torch.ops.load_library(itk_odereg.ops.library_path())`` first and
needs nothing else from itk_odereg.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from torch import nn

from ..core.intensity import normalize_intensity
from ..io_utils import atomic_write
from .pretrained import load_pretrained

__all__ = ["export_model", "CheckedModel", "CheckedProgram"]

#: the fewest voxels per axis the exported module accepts (the model's three scales halve the grid twice).
MIN_VOXELS = 8


def _check_input(x: torch.Tensor, name: str, min_voxels: int) -> None:
    if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] != 1:
        raise ValueError("MS-ODENet module: '" + name + "' must be a [1, 1, D, H, W] tensor (one 3D image, "
                         "batch 1, one channel), got shape " + str(list(x.shape)))
    if not x.is_floating_point():
        raise ValueError("MS-ODENet module: '" + name + "' must have floating voxels (float32 or float64), got "
                         "integer, bool or complex ones: convert it with .float()")
    if min(x.shape[2], x.shape[3], x.shape[4]) < min_voxels:
        raise ValueError("MS-ODENet module: '" + name + "' must have at least " + str(min_voxels)
                         + " voxels along every axis, got " + str(list(x.shape[2:])))
    if not bool(torch.isfinite(x).all()):
        raise ValueError("MS-ODENet module: '" + name + "' has NaN or infinite voxels")


class CheckedModel(nn.Module):
    """An MS-ODENet model behind input checks and intensity normalization (what ``.pt`` exports hold)."""

    def __init__(self, model: nn.Module, min_voxels: int = MIN_VOXELS) -> None:
        super().__init__()
        self.model = model
        self.min_voxels = min_voxels

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        _check_input(fixed, "fixed", self.min_voxels)
        _check_input(moving, "moving", self.min_voxels)
        if fixed.shape != moving.shape:
            raise ValueError("MS-ODENet module: 'fixed' " + str(list(fixed.shape)) + " and 'moving' "
                             + str(list(moving.shape)) + " must have the same shape (resample both onto one grid)")
        return self.model(normalize_intensity(fixed.float()), normalize_intensity(moving.float()))


class CheckedProgram(nn.Module):
    """What ``.pt2`` programs hold: the model behind a finiteness assertion and intensity
    normalization (the shapes and dtype are the exported program's own guards)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        for name, x in (("fixed", fixed), ("moving", moving)):
            # an op in the graph, checked on every call; a Python `if` would be decided once, at export
            torch.ops.aten._assert_async.msg(torch.isfinite(x).all(),
                                             "MS-ODENet program: '" + name + "' has NaN or infinite voxels")
        return self.model(normalize_intensity(fixed), normalize_intensity(moving))


def _check_shape(shape: Optional[Sequence[int]]) -> tuple:
    size = tuple(shape or DEFAULT_SHAPE)
    if len(size) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < MIN_VOXELS for n in size):
        raise ValueError(f"export_model(): 'shape' must be three sizes (D, H, W) of at least {MIN_VOXELS} voxels "
                         f"(the model's three scales halve the grid twice), got {list(size)}")
    return size


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module

DEFAULT_SHAPE = (81, 97, 81)  # the 160x192x160 mm training box at 2 mm


def export_model(name: str, path: str | Path, shape: Optional[Sequence[int]] = None) -> str:
    """Write model ``name`` to ``path``: TorchScript for ``.pt``, torch.export for ``.pt2``.

    Args:
        name: ``"bspline"``, ``"rigid"`` or ``"rigid+bspline"`` (shipped), or a ``.pt``
            model file written by ``itk-odereg train``.
        path: output file; written atomically.
        shape: input size (D, H, W) for torch.export, which specializes the program
            to it (default 81x97x81; at least 8 per axis). TorchScript takes any size.

    Returns:
        ``path`` as a str.
    """
    path = Path(path)
    size = _check_shape(shape) if path.suffix == ".pt2" else None
    module, _ = load_pretrained(name)
    module = _frozen(module)
    if size is not None:
        example = (torch.zeros(1, 1, *size), torch.zeros(1, 1, *size))
        program = torch.export.export(CheckedProgram(module), example)
        return atomic_write(path, lambda tmp: torch.export.save(program, tmp), inputs=[name], caller="export_model()")
    scripted = torch.jit.script(CheckedModel(module))
    return atomic_write(path, lambda tmp: torch.jit.save(scripted, tmp), inputs=[name], caller="export_model()")
