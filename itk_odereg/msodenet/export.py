"""Export of the shipped MS-ODENet models: TorchScript (``.pt``) and ``torch.export`` (``.pt2``).

Both take ``forward(fixed, moving)`` with float tensors [1, 1, D, H, W] on one
grid (intensities in [0, 1], the model's training resolution) and return the
displacement [1, 3, D, H, W] in voxels, fixed to moving, in the ops'
convention. They call the ops as ``torch.ops.itk_odereg.*``: a process loads
them with ``torch.ops.load_library(itk_odereg.ops.library_path())`` first and
needs nothing else from itk_odereg.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..io_utils import atomic_write
from .pretrained import load_pretrained

__all__ = ["export_model"]

DEFAULT_SHAPE = (81, 97, 81)  # the 160x192x160 mm training box at 2 mm


def export_model(name: str, path: str | Path, shape: Optional[Sequence[int]] = None) -> str:
    """Write model ``name`` to ``path``: TorchScript for ``.pt``, torch.export for ``.pt2``.

    Args:
        name: ``"bspline"``, ``"rigid"`` or ``"rigid+bspline"`` (shipped), or a ``.pt``
            model file written by ``itk-odereg train``.
        path: output file; written atomically.
        shape: example input size (D, H, W) for torch.export, which specializes
            the program to it (default 81x97x81). TorchScript takes any size.

    Returns:
        ``path`` as a str.
    """
    module, _ = load_pretrained(name)
    path = Path(path)
    if path.suffix == ".pt2":
        size = tuple(shape or DEFAULT_SHAPE)
        example = (torch.zeros(1, 1, *size), torch.zeros(1, 1, *size))
        program = torch.export.export(module, example)
        return atomic_write(path, lambda tmp: torch.export.save(program, tmp), inputs=[name], caller="export_model()")
    scripted = torch.jit.script(module)
    return atomic_write(path, lambda tmp: torch.jit.save(scripted, tmp), inputs=[name], caller="export_model()")
