"""Affine pre-alignment in physical space: centres of mass, then rigid, then affine.

Fixed and moving images live on their own grids (any spacing, origin,
direction, size). The transform maps fixed physical points to moving physical
points (ITK convention, LPS mm): ``T(p) = A p + t``. It is optimized in torch
on a coarse-to-fine pyramid: every level samples the (blurred) moving image
at ``T(p)`` for the points ``p`` of a corner-aligned coarse copy of the fixed
grid with ``grid_sample``, so the two grids never need to match.

Robustness to large initial rotations comes from a small search at the
coarsest level: rotations of +/- ``search_degrees`` about each axis are tried
from the centre-of-mass alignment, and the best start is optimized.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..losses import make_metric
from ..core.sampling import sample_at_world_points
from ..core.moments import weighted_centroid
from ..core.random import seeded
from ..core.separable import gaussian_smooth
from .adam import Adam
from .convergence import record_iteration
from .pyramid import downsample_image, pyramid_level

__all__ = ["AffineSettings", "AffineResult", "affine_register", "center_of_mass"]


@dataclass
class AffineSettings:
    """Settings of the affine stage. Distances in mm, angles in degrees."""

    metric: Optional[str] = None                         # None: "lncc" alone, or register()'s metric
    metric_options: dict = field(default_factory=dict)
    level_spacings_mm: tuple[float, ...] = (8.0, 4.0)   # coarse-to-fine working spacings
    rigid_iterations: tuple[int, ...] = (80, 40)
    affine_iterations: tuple[int, ...] = (60, 40)
    learning_rate: float = 0.02                          # Adam: ~radians, ~relative scale, and x 10 mm for shifts
    search_degrees: float = 25.0                         # rotation search at the coarsest level (0: none)
    stages: tuple[str, ...] = ("rigid", "affine")
    convergence_window: int = 10                         # iterations in the convergence window
    convergence_threshold: float = 1e-3                  # stop a level below this relative loss decrease per iteration (0: never)
    mi_samples: Optional[float] = 0.25                   # mutual information: fraction of voxels drawn per iteration (None: all)
    seed: Optional[int] = 0


@dataclass
class AffineResult:
    """``matrix`` (d x d) and ``translation`` (d,) of T(p) = A p + t, fixed to moving, LPS mm."""

    matrix: np.ndarray
    translation: np.ndarray
    loss_history: list
    seconds: float


def center_of_mass(image: torch.Tensor, index_to_world: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre (physical mm, x-y-z order) of a non-negative-shifted image.

    Args:
        image: Tensor[1, 1, *S].
        index_to_world: (d+1)x(d+1) homogeneous matrix from torch-order voxel
            indices to physical (x, y, z) points.
    """
    w = image[0, 0] - image.min()
    w = torch.where(w > 0.1 * w.max(), w, torch.zeros_like(w)) if w.max() > 0 else torch.ones_like(w)
    axes = [torch.arange(s, dtype=image.dtype, device=image.device) for s in w.shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    index = weighted_centroid(torch.stack(grids).reshape(len(grids), -1), w.reshape(-1), reduction="per_axis")
    return index_to_world[:-1, :-1].to(image.dtype) @ index + index_to_world[:-1, -1].to(image.dtype)


def _rotation(angles: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotation matrix from a rotation vector (3D, radians) or an angle (2D)."""
    if ndim == 2:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    zero = torch.zeros((), dtype=angles.dtype, device=angles.device)
    skew = torch.stack([
        torch.stack([zero, -angles[2], angles[1]]),
        torch.stack([angles[2], zero, -angles[0]]),
        torch.stack([-angles[1], angles[0], zero]),
    ])
    return torch.linalg.matrix_exp(skew)


class _Sampler:
    """Samples a moving image at T(p) for the points p of a coarse fixed grid."""

    def __init__(self, moving: torch.Tensor, moving_world_to_index: torch.Tensor, points: torch.Tensor) -> None:
        self.moving = moving
        self.w2i = moving_world_to_index.to(moving.dtype)
        self.points = points  # [P, d] physical (x, y, z)

    def __call__(self, matrix: torch.Tensor, translation: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
        world = self.points @ matrix.T + translation
        return sample_at_world_points(self.moving, self.w2i, world, list(out_shape), outside="zeros")


def _level_points(shape, spacing, index_to_world, target_spacing_mm, dtype, device):
    factor = max(1.0, target_spacing_mm / min(spacing))
    level = pyramid_level(shape, spacing, factor)
    axes = [torch.linspace(0, s - 1, n, dtype=torch.float64) for s, n in zip(shape, level.shape)]
    grids = torch.meshgrid(*axes, indexing="ij")
    index = torch.stack([g.reshape(-1) for g in grids], dim=1)
    world = index @ index_to_world[:-1, :-1].T + index_to_world[:-1, -1]
    return level, world.to(dtype=dtype, device=device)


class _AffineParameters:
    """The optimized parameters of ``T(p) = L (p - c) + c + t``, about the fixed centre of mass ``c``.

    ``L = R(angles) (diag(exp(log_scale)) + upper(shear))``; the translation is held in units of
    10 mm, so that one learning rate fits angles (radians) and shifts alike.
    """

    def __init__(self, center: torch.Tensor, shift: torch.Tensor, ndim: int) -> None:
        dtype, device = center.dtype, center.device
        self.ndim = ndim
        self.center = center
        self.angles = torch.zeros(1 if ndim == 2 else 3, dtype=dtype, device=device, requires_grad=True)
        self.log_scale = torch.zeros(ndim, dtype=dtype, device=device)
        self.shear = torch.zeros(ndim, ndim, dtype=dtype, device=device)
        self.translation = (shift / 10.0).clone().requires_grad_(True)

    def transform(self, angles: Optional[torch.Tensor] = None, with_affine: bool = False):
        """(L, t') with ``T(p) = L p + t'``, LPS mm."""
        linear = _rotation(self.angles if angles is None else angles, self.ndim)
        if with_affine:
            linear = linear @ (torch.diag(torch.exp(self.log_scale)) + torch.triu(self.shear, diagonal=1))
        return linear, self.center - linear @ self.center + self.translation * 10.0

    def trainable(self, stage: str) -> list:
        if stage == "rigid":
            return [self.angles, self.translation]
        self.log_scale.requires_grad_(True)
        self.shear.requires_grad_(True)
        return [self.angles, self.translation, self.log_scale, self.shear]


@torch.no_grad()
def _search_rotation(params: _AffineParameters, metric, level_data, degrees: float) -> None:
    """Start from the best of the rotations by 0 and +-``degrees`` about each axis, on the coarsest level."""
    level, f_level, sampler = level_data
    best = (math.inf, None)
    for combo in itertools.product([0.0, degrees, -degrees], repeat=params.angles.numel()):
        trial = torch.tensor([math.radians(a) for a in combo], dtype=params.center.dtype, device=params.center.device)
        linear, t = params.transform(trial)
        value = float(metric(f_level, sampler(linear, t, level.shape)))
        if value < best[0]:
            best = (value, trial)
    params.angles = best[1].clone().requires_grad_(True)


def _optimize_level(params: _AffineParameters, stage: str, metric, level_data, n_iter: int,
                    settings: AffineSettings, history: list, progress) -> None:
    """Up to ``n_iter`` Adam steps of one stage (rigid or affine) on one level."""
    level, f_level, sampler = level_data
    optimizer = Adam.of(params.trainable(stage), settings.learning_rate)
    level_losses: list = []
    for iteration in range(n_iter):
        optimizer.zero_grad()
        linear, t = params.transform(with_affine=stage == "affine")
        loss = metric(f_level, sampler(linear, t, level.shape))
        loss.backward()
        optimizer.step()
        record = {"stage": stage, "level_spacing_mm": level.spacing_mm, "iteration": iteration,
                  "iterations": n_iter, "loss": float(loss.detach())}
        if record_iteration(record, history, level_losses, settings.convergence_window,
                            settings.convergence_threshold, progress):
            break


def affine_register(
    fixed: torch.Tensor,
    fixed_index_to_world: np.ndarray,
    moving: torch.Tensor,
    moving_index_to_world: np.ndarray,
    settings: AffineSettings | None = None,
    progress: Optional[Callable[[dict], None]] = None,
) -> AffineResult:
    """Find T(p) = A p + t (fixed to moving, LPS mm) that aligns ``moving`` to ``fixed``.

    Args:
        fixed: Tensor[1, 1, *S_f] float32 on the fixed grid.
        fixed_index_to_world: (d+1)x(d+1) matrix from fixed torch-order voxel
            indices (z, y, x) to physical points (x, y, z), LPS mm.
        moving: Tensor[1, 1, *S_m] on its own grid.
        moving_index_to_world: likewise for the moving grid.
        settings: :class:`AffineSettings`.
        progress: called after every iteration with a dict.

    Returns:
        :class:`AffineResult`.
    """
    settings = settings or AffineSettings()
    with seeded(settings.seed, fixed.device):
        start = time.perf_counter()
        ndim = fixed.dim() - 2
        dtype, device = fixed.dtype, fixed.device
        f_i2w = torch.as_tensor(fixed_index_to_world, dtype=torch.float64)
        m_i2w = torch.as_tensor(moving_index_to_world, dtype=torch.float64)
        m_w2i = torch.linalg.inv(m_i2w)
        f_spacing = [float(torch.linalg.norm(f_i2w[:-1, d])) for d in range(ndim)]
        m_spacing = [float(torch.linalg.norm(m_i2w[:-1, d])) for d in range(ndim)]
        options = dict(settings.metric_options)
        if settings.metric == "mi" and "samples" not in options:
            # A random quarter of the voxels per iteration, as ANTs' affine stages sample MI
            # ("Random, 0.25") at about a quarter of the cost, drawn from the stage's seeded generator.
            options["samples"] = settings.mi_samples
        metric = make_metric(settings.metric or "lncc", **options)

        center = center_of_mass(fixed.double(), f_i2w).to(dtype)
        shift = (center_of_mass(moving.double(), m_i2w).to(dtype) - center)
        params = _AffineParameters(center, shift, ndim)
        levels = []
        for spacing_mm in settings.level_spacings_mm:
            level, points = _level_points(list(fixed.shape[2:]), f_spacing, f_i2w, spacing_mm, dtype, device)
            f_level = downsample_image(fixed, f_spacing, level)
            sigma_m = [0.5 * spacing_mm / h if spacing_mm > h else 0.0 for h in m_spacing]
            sampler = _Sampler(gaussian_smooth(moving, sigma_m), m_w2i.to(device), points)
            levels.append((level, f_level, sampler))

        if settings.search_degrees > 0:
            _search_rotation(params, metric, levels[0], settings.search_degrees)
        history: list = []
        for stage in settings.stages:
            if stage not in ("rigid", "affine"):
                raise ValueError(f'AffineSettings(): invalid stage "{stage}". Must be "rigid" or "affine"')
            iterations = settings.rigid_iterations if stage == "rigid" else settings.affine_iterations
            for level_data, n_iter in zip(levels, iterations):
                _optimize_level(params, stage, metric, level_data, n_iter, settings, history, progress)

        with torch.no_grad():
            linear, t = params.transform(with_affine="affine" in settings.stages)
        return AffineResult(linear.double().cpu().numpy(), t.double().cpu().numpy(), history,
                            time.perf_counter() - start)
