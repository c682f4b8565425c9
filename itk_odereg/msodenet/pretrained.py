"""MS-ODENet models (shipped with the package, or trained model files) and registration with them.

``register(fixed, moving, method="msodenet")`` lands here after the affine
stage: both images are on the working grid, and the model runs on a
corner-aligned copy of it at the model's own resolution (its training
resolution, isotropic). The displacement comes back to the working grid in
voxel units, fixed to moving, like NODEO's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from ..core.levels import corner_aligned_level
from ..ode.flow import invert_displacement
from ._geometry import rescale_displacement, resize
from .model import CascadeODENet, MSODENet
from .train import load_model

__all__ = ["MODELS", "weights_path", "load_pretrained", "msodenet_register", "MSODENetResult"]

WEIGHTS_DIR = Path(__file__).with_name("weights")
# Shipped model names -> weight files; "rigid+bspline" is the cascade of the two.
MODELS = {"bspline": ("bspline.pt",), "rigid": ("rigid.pt",), "rigid+bspline": ("rigid.pt", "bspline.pt")}


def weights_path(name: str) -> Path:
    """Path of a shipped weight file (``bspline.pt``, ``rigid.pt``)."""
    return WEIGHTS_DIR / name


@lru_cache(maxsize=None)
def _load(path: Path) -> tuple[MSODENet, float]:
    if not path.is_file():
        shipped = path.parent == WEIGHTS_DIR
        raise FileNotFoundError(
            f"msodenet: model file '{path}' does not exist"
            + (" (the shipped weights are missing from this installation: reinstall itk-odereg, or train a model "
               "with `itk-odereg train --label-maps DIR --output model.pt` and pass its path as the model)"
               if shipped else ""))
    model, metadata = load_model(path)
    return model, float(metadata.get("resolution_mm", 2.0))


def is_model_name(model: str) -> bool:
    """A shipped model name, the path of a model file written by ``itk-odereg train``, or
    ``"RIGID.pt+DEFORMABLE.pt"`` for the cascade of two such files."""
    model = str(model)
    return model in MODELS or all(part.endswith(".pt") for part in model.split("+"))


def load_pretrained(name: str = "bspline") -> tuple[torch.nn.Module, float]:
    """A shipped model (or a trained model file) in eval mode and its working resolution (mm).

    Args:
        name: ``"bspline"``, ``"rigid"`` or ``"rigid+bspline"`` (the cascade of the
            two), the path of a ``.pt`` file written by ``itk-odereg train``, or
            ``"RIGID.pt+DEFORMABLE.pt"`` for the cascade of two such files.

    Returns:
        (module with ``forward(fixed, moving) -> displacement`` in voxels, resolution in mm).
    """
    if not is_model_name(name):
        raise ValueError(f'msodenet: invalid model "{name}". Must be one of {list(MODELS)} or a .pt model file')
    if name in MODELS:
        loaded = [_load(weights_path(f)) for f in MODELS[name]]
    else:
        loaded = [_load(Path(part).resolve()) for part in str(name).split("+")]
        if len(loaded) > 2:
            raise ValueError(f'msodenet: model "{name}": a cascade is RIGID.pt+DEFORMABLE.pt (two files)')
    if len(loaded) == 1:
        return loaded[0]
    (rigid, res_r), (deformable, res_d) = loaded
    if res_r != res_d:
        raise ValueError(f"msodenet: the rigid ({res_r} mm) and deformable ({res_d} mm) models differ in resolution")
    return CascadeODENet(rigid, deformable).eval(), res_d


@dataclass
class MSODENetResult:
    """Output of :func:`msodenet_register`: voxel-unit displacements on the input grid, tensor order."""

    displacement: torch.Tensor
    inverse_displacement: torch.Tensor
    seconds: float
    loss_history: list = field(default_factory=list)


def model_grid_shape(shape: Sequence[int], spacing_mm: Sequence[float], resolution_mm: float) -> list[int]:
    """Corner-aligned grid over the same box with about ``resolution_mm`` spacing (rounded, as the
    shipped models were trained; at least 8 voxels per axis)."""
    size, _ = corner_aligned_level(shape, spacing_mm, target_spacing_mm=resolution_mm, rounding="round", min_size=8,
                                   keep_singleton_axes=False)
    return list(size)


@torch.no_grad()
def msodenet_register(fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: Sequence[float],
                      model: str = "bspline") -> MSODENetResult:
    """Register ``moving`` to ``fixed`` (Tensor[1, 1, D, H, W] on one grid) with a shipped model.

    Args:
        fixed, moving: intensities normalized to about [0, 1], same 3D grid.
        spacing_mm: voxel spacing of that grid per tensor axis, mm.
        model: shipped model name (see :data:`MODELS`) or a model file from ``itk-odereg train``.

    Returns:
        :class:`MSODENetResult` with u such that ``warp(moving, u) ~ fixed``.
    """
    start = time.perf_counter()
    if fixed.dim() != 5:
        raise ValueError("msodenet: the shipped models are 3D; got a "
                         f"{fixed.dim() - 2}D image (use method='nodeo' for 2D)")
    network, resolution = load_pretrained(model)
    network = network.to(fixed.device)
    shape = list(fixed.shape[2:])
    work = model_grid_shape(shape, spacing_mm, resolution)
    f = resize(fixed.float(), work).clamp(0, 1)
    m = resize(moving.float(), work).clamp(0, 1)
    u_model = network(f, m)
    u = rescale_displacement(u_model, work, shape).to(fixed.dtype)
    inverse = invert_displacement(u)
    return MSODENetResult(u, inverse, time.perf_counter() - start)
