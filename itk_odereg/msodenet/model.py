"""MS-ODENet: a learned multi-scale ODE optimizer of registration parameters.

The parameters theta of a transformation evolve as

    d theta / dt = f_l(moving o phi_theta(t), fixed, t),   t in [0, T], T = 3,

where [0, 3] is split into three equal segments, segment l solved on pyramid
level l (factors 4, 2, 1, coarse to fine) with its own network f_l. theta is
defined once, on the finest grid, so carrying it from one level to the next
needs no resampling: every level evaluates the same transformation at its own
resolution.

Three parameterizations (``PARAMETERIZATIONS``): ``"rigid"`` (6 parameters,
:class:`RigidVelocity`), ``"bspline"`` (a cubic B-spline control grid,
:class:`BSplineVelocity`) and ``"dense"`` (a displacement at every voxel of the
finest grid, :class:`DenseVelocity`, a small UNet as in the paper). Every
network starts as a classical optimizer (a learned linear map of the MIND demons
force) that training improves on.

Conventions (those of the ``itk_odereg`` ops): images are [1, 1, *S] on one
grid, tensor order (z, y, x) in 3D; a displacement u is [1, 3, *S] in voxel
units of that grid and maps fixed to moving: ``warp(moving, u) ~ fixed``. The
model's working grid is near-isotropic (``register`` resamples to it), so
rotations are taken in voxel space.

The modules call the ops through ``torch.ops.itk_odereg`` and are written for
TorchScript: a scripted model runs in a process that has only torch and the
op library.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._config import DEFAULT_FORCE_GAIN, DEFAULT_STEPS, LEVEL_FACTORS, PARAMETERIZATIONS, SOLVERS
from ._geometry import level_shape, rescale_displacement, resize, rigid_displacement, rigid_parameter_rate
from ._features import fixed_image_cues
from ._rigid_search import global_rigid_search
from ._velocity import BSplineVelocity, DenseVelocity, RigidVelocity

__all__ = ["MSODENet", "CascadeODENet", "DenseVelocity", "rigid_displacement", "PARAMETERIZATIONS", "SOLVERS"]


class MSODENet(nn.Module):
    """The three-scale ODE registration model for one parameterization.

    Args:
        parameterization: ``"rigid"`` (6 parameters), ``"bspline"`` (control
            grid with ``control_spacing`` finest-grid voxels between points) or
            ``"dense"`` (a displacement [1, 3, *S] on the finest grid, in its
            voxels, fixed to moving; :class:`DenseVelocity`).
        steps: Euler steps per unit-time segment, coarse to fine; default
            :data:`DEFAULT_STEPS` (B-spline and dense (5, 5, 4), the paper's
            B-spline step sizes 0.2, 0.2, 0.25; rigid (8, 8, 8), where the
            paper steps 0.1 at the fine level).
        solver: ``"euler"`` or ``"adaptive_heun"`` (error-controlled Heun-Euler
            pair, tolerance ``tolerance`` in parameter units, used on the two
            coarse levels as in the paper; the fine level stays Euler).
        width: feature channels of the networks.
        force_gain: the gains of the classical force term an untrained model
            starts from (:class:`BSplineVelocity`, :class:`DenseVelocity`,
            :class:`RigidVelocity`), one per level, coarse to fine, or one for
            all; default (0, 3, 8) for B-spline (the 8 mm-voxel level
            overshoots) and 12 for rigid (with 8 Euler steps per level: 1.5 per
            step, below the Euler stability limit of the force, near 2): the
            settings where the untrained model best recovers synthetic
            deformations and rigid motions of the training brains (2 mm).
            Dense takes B-spline's (0, 3, 8): on small synthetic B-spline
            deformations (2 to 4 voxels) the untrained dense model recovers them
            as well as the untrained B-spline one, without folding.
        global_search: rigid only (default on): start the ODE at
            theta(0) = :func:`global_rigid_search` on the coarsest level
            instead of the identity, so that heads turned by any angle are
            found; the ODE refines from there. Off, the model is a local
            optimizer (its learned and force terms reach about 15 degrees).
    """

    def __init__(self, parameterization: str = "bspline", steps: Optional[Tuple[int, int, int]] = None,
                 solver: str = "euler", tolerance: float = 1e-3, control_spacing: int = 4, width: int = 16,
                 force_gain: Optional[List[float]] = None, global_search: Optional[bool] = None) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f'MSODENet(): invalid parameterization "{parameterization}". Must be one of '
                             f"{list(PARAMETERIZATIONS)}")
        if solver not in SOLVERS:
            raise ValueError(f'MSODENet(): invalid solver "{solver}". Must be one of {list(SOLVERS)}')
        if steps is None:
            steps = DEFAULT_STEPS[parameterization]
        if len(steps) != 3 or any(int(s) < 1 for s in steps):
            raise ValueError(f"MSODENet(): 'steps' must be 3 positive counts (coarse to fine), got {list(steps)}")
        self.parameterization = parameterization
        self.steps = [int(s) for s in steps]
        self.solver = solver
        self.tolerance = float(tolerance)
        self.control_spacing = int(control_spacing)
        self.width = int(width)
        if force_gain is None:
            force_gain = list(DEFAULT_FORCE_GAIN[parameterization])
        if isinstance(force_gain, (int, float)):
            force_gain = [float(force_gain)] * 3
        if len(force_gain) != 3:
            raise ValueError(f"MSODENet(): 'force_gain' must be one gain or 3 (coarse to fine), got {force_gain}")
        self.force_gain = [float(g) for g in force_gain]
        if global_search is None:
            global_search = parameterization == "rigid"
        if global_search and parameterization != "rigid":
            raise ValueError("MSODENet(): 'global_search' is for the rigid parameterization only")
        self.global_search = bool(global_search)
        # Training recomputes each step's activations in the backward pass
        # (torch.utils.checkpoint): memory independent of the number of steps.
        self.checkpointing = False
        self.factors = list(LEVEL_FACTORS)
        if parameterization == "rigid":
            self.nets = nn.ModuleList([RigidVelocity(width, factor=f, force_gain=g)
                                       for f, g in zip(LEVEL_FACTORS, self.force_gain)])
        elif parameterization == "dense":
            self.nets = nn.ModuleList([DenseVelocity(width, factor=f, force_gain=g)
                                       for f, g in zip(LEVEL_FACTORS, self.force_gain)])
        else:
            # Level factor f: the control grid is control_spacing / f voxels apart there.
            downs = [max(0, int(round(math.log2(max(self.control_spacing // f, 1))))) for f in LEVEL_FACTORS]
            self.nets = nn.ModuleList([BSplineVelocity(d, width, factor=f, force_gain=g)
                                       for d, f, g in zip(downs, LEVEL_FACTORS, self.force_gain)])

    def config(self) -> dict:
        """Constructor arguments, stored with the weights."""
        return {"parameterization": self.parameterization, "steps": list(self.steps), "solver": self.solver,
                "tolerance": self.tolerance, "control_spacing": self.control_spacing, "width": self.width,
                "force_gain": self.force_gain, "global_search": self.global_search}

    def initial_theta(self, shape: List[int], like: torch.Tensor) -> torch.Tensor:
        """theta of the identity map for a finest grid of ``shape``: rigid [1, 6], B-spline
        control grid [1, 3, *G], dense [1, 3, *shape] (finest-grid voxels)."""
        if self.parameterization == "rigid":
            return torch.zeros(1, 6, dtype=like.dtype, device=like.device)
        if self.parameterization == "dense":
            return torch.zeros(1, 3, shape[0], shape[1], shape[2], dtype=like.dtype, device=like.device)
        grid = [(s - 1) // self.control_spacing + 4 for s in shape]
        return torch.zeros(1, 3, grid[0], grid[1], grid[2], dtype=like.dtype, device=like.device)

    def displacement(self, theta: torch.Tensor, shape: List[int], fine_shape: List[int]) -> torch.Tensor:
        """The transformation of ``theta`` as a displacement on a grid of ``shape`` (corner-aligned
        with ``fine_shape``), in voxels of that grid, fixed to moving."""
        if self.parameterization == "rigid":
            return rigid_displacement(theta, shape, fine_shape)
        if self.parameterization == "dense":
            return rescale_displacement(theta, fine_shape, shape)
        s = self.control_spacing
        fine = torch.ops.itk_odereg.bspline_to_dense(theta, fine_shape, [s, s, s])
        return rescale_displacement(fine, fine_shape, shape)

    def _rate(self, level: int, theta: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
              fixed_cues: Tuple[torch.Tensor, torch.Tensor], t: float, fine_shape: List[int]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.checkpointing and torch.is_grad_enabled():
                return self._checkpointed_rate(level, theta, moving, fixed, fixed_cues, t, fine_shape)
        return self._rate_of(level, theta, moving, fixed, fixed_cues, t, fine_shape)

    @torch.jit.unused
    def _checkpointed_rate(self, level: int, theta: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
                           fixed_cues: Tuple[torch.Tensor, torch.Tensor], t: float, fine_shape: List[int]) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self._rate_of, level, theta, moving, fixed, fixed_cues, t, fine_shape,
                          use_reentrant=False)

    def _rate_of(self, level: int, theta: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
                 fixed_cues: Tuple[torch.Tensor, torch.Tensor], t: float, fine_shape: List[int]) -> torch.Tensor:
        shape = list(fixed.shape[2:])
        warped = torch.ops.itk_odereg.warp(moving, self.displacement(theta, shape, fine_shape), "zeros")
        rate = torch.zeros_like(theta)
        for i, net in enumerate(self.nets):
            if i == level:
                rate = net(warped, fixed, fixed_cues, t, list(theta.shape))
        if self.parameterization == "rigid":
            rate = rigid_parameter_rate(theta, rate)
        return rate

    def integrate(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """theta(T): the parameters after the three segments."""
        fine_shape = list(fixed.shape[2:])
        theta = self.initial_theta(fine_shape, fixed)
        for level in range(3):
            factor = self.factors[level]
            shape = level_shape(fine_shape, factor)
            fixed_l = resize(F.avg_pool3d(fixed, factor) if factor > 1 else fixed, shape)
            moving_l = resize(F.avg_pool3d(moving, factor) if factor > 1 else moving, shape)
            cues = fixed_image_cues(fixed_l)
            if level == 0 and self.global_search:
                theta = global_rigid_search(fixed_l, moving_l, fine_shape)
            t0 = float(level)
            if self.solver == "adaptive_heun" and level < 2:
                theta = self._adaptive_heun(level, theta, moving_l, fixed_l, cues, t0, fine_shape)
            else:
                h = 1.0 / self.steps[level]
                for k in range(self.steps[level]):
                    theta = theta + h * self._rate(level, theta, moving_l, fixed_l, cues, t0 + k * h, fine_shape)
        return theta

    def _adaptive_heun(self, level: int, theta: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
                       fixed_cues: Tuple[torch.Tensor, torch.Tensor], t0: float, fine_shape: List[int]) -> torch.Tensor:
        t = t0
        h = 1.0 / self.steps[level]
        end = t0 + 1.0
        min_step = 1.0 / 64  # bounds the work: at most 64 accepted steps per level
        while t < end - 1e-9:
            h = min(max(h, min_step), end - t)
            k1 = self._rate(level, theta, moving, fixed, fixed_cues, t, fine_shape)
            k2 = self._rate(level, theta + h * k1, moving, fixed, fixed_cues, t + h, fine_shape)
            error = float((0.5 * h * (k2 - k1)).abs().max())
            if error <= self.tolerance or h <= min_step:
                theta = theta + 0.5 * h * (k1 + k2)
                t += h
            factor = 0.9 * math.sqrt(self.tolerance / max(error, 1e-12))
            h = h * min(5.0, max(0.2, factor))
        return theta

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Displacement [1, 3, *S] in voxels with ``warp(moving, u) ~ fixed`` (fixed to moving)."""
        theta = self.integrate(fixed, moving)
        shape = list(fixed.shape[2:])
        return self.displacement(theta, shape, shape)


class CascadeODENet(nn.Module):
    """Rigid then deformable: the B-spline model registers the rigidly aligned moving
    image, and the maps compose (fixed -> B-spline -> rigid -> moving)."""

    def __init__(self, rigid: MSODENet, deformable: MSODENet) -> None:
        super().__init__()
        self.rigid = rigid
        self.deformable = deformable

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        u_rigid = self.rigid(fixed, moving)
        aligned = torch.ops.itk_odereg.warp(moving, u_rigid, "zeros")
        u_deformable = self.deformable(fixed, aligned)
        return u_deformable + torch.ops.itk_odereg.warp(u_rigid, u_deformable, "border")
