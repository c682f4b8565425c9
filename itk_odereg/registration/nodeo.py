"""NODEO deformable registration of two images on one grid (per-pair optimization).

Wu et al., "Deformable Image Registration using Neural ODEs" (NODEO): no
training data; the weights of a small velocity network are optimized for each
pair so that the flow it generates warps the moving image onto the fixed one.

Both images are tensors on the same grid (the fixed image's grid, or a
corner-aligned resampling of it); the moving image has already been brought
there, e.g. through the affine pre-alignment. The result is a displacement in
voxel units of that grid, tensor order, with warp(moving, u) ~ fixed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .. import ops
from ..core.levels import corner_aligned_level
from ..core.memory import release_freed_memory
from ..core.random import seeded
from ..core.intensity import robust_range
from ..losses import LNCCLoss, MILoss, make_metric
from ..ode.flow import NeuralODEFlow, invert_displacement
from ..ode.velocity import VelocityNetwork
from .adam import Adam
from .convergence import record_iteration
from .pyramid import downsample_image, pyramid_level, resample_to_shape

__all__ = ["NODEOSettings", "NODEOResult", "nodeo_register"]


@dataclass
class NODEOSettings:
    """Settings of the NODEO stage. Distances are in mm, weights are dimensionless.

    Defaults follow the paper where it is explicit (loss terms, Adam with
    amsgrad, Euler steps); the rest were tuned on synthetic inter-subject brain
    pairs with ``benchmarks/accuracy.py`` (see ``benchmarks/README.md``): no
    folded voxels, and Dice at least that of greedy, ANTs SyN and elastix at
    2 mm. The velocity's control spacing and smoothing follow the working
    resolution when left at None (:func:`resolved_velocity_scales`).
    """

    metric: str = "lncc"
    metric_options: dict = field(default_factory=dict)
    levels: tuple[float, ...] = (4.0, 2.0, 1.0)          # pyramid factors, coarse to fine
    iterations: tuple[int, ...] = (120, 60, 50)          # Adam iterations per level (benchmarks/README.md)
    steps: int = 4                                        # Euler steps on [0, 1] while optimizing the finest level
    coarse_steps: Optional[int] = 3                        # ... and every coarser level: min(coarse_steps, steps); None: steps
    output_steps: int = 4                                  # steps of the returned map: max(steps, output_steps)
    method: str = "euler"
    adjoint: bool = False
    learning_rate_mm: float = 0.2                          # Adam step on the coarse velocity, mm
    control_spacing_mm: Optional[float] = None             # velocity control grid; None: by resolution (below)
    smoothing_mm: Optional[float] = None                   # Gaussian smoothing of the velocity; None: likewise
    flow_spacing_ratio: float = 0.5                        # flow grid spacing / control spacing (at most the level's own grid)
    hidden_channels: int = 8                               # width of the state network (0: stationary)
    jacobian_weight: float = 5.0                           # lambda_J * mean relu(0.5 - det J)^2
    jacobian_threshold: float = 0.5
    smoothness_weight: float = 0.05                        # lambda_df * diffusion energy (mm/mm)
    velocity_weight: float = 5e-5                          # lambda_v * kinetic energy (mm^2)
    convergence_window: int = 10                           # iterations in the convergence window
    convergence_threshold: float = 0.0                     # stop a level below this relative loss decrease per iteration (0: never)
    seed: Optional[int] = 0

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.iterations):
            raise ValueError(
                f"NODEOSettings(): 'levels' {self.levels} and 'iterations' {self.iterations} must have the same length"
            )
        if any(f < 1 for f in self.levels):
            raise ValueError(f"NODEOSettings(): pyramid 'levels' must be factors >= 1, got {self.levels}")
        if self.steps < 1:
            raise ValueError(f"NODEOSettings(): 'steps' must be >= 1, got {self.steps}")
        if self.coarse_steps is not None and self.coarse_steps < 1:
            raise ValueError(f"NODEOSettings(): 'coarse_steps' must be >= 1 or None, got {self.coarse_steps}")
        if self.output_steps < 1:
            raise ValueError(f"NODEOSettings(): 'output_steps' must be >= 1, got {self.output_steps}")
        if not 0 < self.flow_spacing_ratio <= 1:
            raise ValueError(f"NODEOSettings(): 'flow_spacing_ratio' must be in (0, 1], got {self.flow_spacing_ratio}")
        if self.convergence_window < 3:
            raise ValueError(f"NODEOSettings(): 'convergence_window' must be >= 3, got {self.convergence_window}")
        if self.convergence_threshold < 0:
            raise ValueError(f"NODEOSettings(): 'convergence_threshold' must be >= 0, got {self.convergence_threshold}")


@dataclass
class NODEOResult:
    """Output of :func:`nodeo_register`: voxel-unit displacements on the input grid, tensor order."""

    displacement: torch.Tensor          # [1, d, *S], forward map x -> x + u(x), fixed to moving
    inverse_displacement: torch.Tensor  # [1, d, *S], its inverse
    loss_history: list                  # dicts per iteration: level, loss and its terms
    seconds: float
    flow: NeuralODEFlow


def resolved_velocity_scales(settings: NODEOSettings, spacing_mm: Sequence[float]) -> tuple[float, float]:
    """(control spacing, smoothing) in mm: the settings' values, or by the finest working spacing.

    Measured on synthetic inter-subject brain pairs (``benchmarks/accuracy.py``):
    6 mm / 4 mm is best at 2 mm (5 mm / 3.5 mm there adds ~0.006 Dice but some
    folding and 25% time), and 5 mm / 3.5 mm is best at 1 mm (Dice 0.782
    against 0.769 for 6 mm / 4 mm on one pair, no folding).
    """
    fine = min(spacing_mm) <= 1.25
    control = settings.control_spacing_mm if settings.control_spacing_mm is not None else (5.0 if fine else 6.0)
    smoothing = settings.smoothing_mm if settings.smoothing_mm is not None else (3.5 if fine else 4.0)
    return float(control), float(smoothing)


def _control_grid(shape: Sequence[int], spacing_mm: Sequence[float], control_spacing_mm: float):
    """Corner-aligned control grid covering the box with about ``control_spacing_mm`` spacing."""
    control_shape, control_spacing = corner_aligned_level(shape, spacing_mm, target_spacing_mm=control_spacing_mm,
                                                          min_size=3, keep_singleton_axes=False)
    return list(control_shape), list(control_spacing)


def _flow_level(level, control_spacing_mm: float, ratio: float = 0.5):
    """Grid the flow is integrated on for a pyramid level: the level itself, or a
    coarser corner-aligned copy at about ``ratio`` times the control spacing. The
    velocity is smooth on the scale of the control grid, so the displacement it
    generates is too, and linear upsampling of it loses nothing that matters
    while the ODE costs several times less."""
    target = ratio * control_spacing_mm
    # Per axis (pyramid_level): spacing max(level spacing, target), a thick axis left as it is.
    factor = max(1.0, target / min(level.spacing_mm))
    return pyramid_level(level.shape, level.spacing_mm, factor)


def _per_axis(values_mm: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """[1, ndim, 1, ...] view of per-axis spacings (tensor axis order), to turn a displacement
    in voxels of that grid into mm by multiplying, or back by dividing."""
    ndim = len(values_mm)
    return torch.tensor(values_mm, dtype=like.dtype, device=like.device).view(1, ndim, *([1] * ndim))


def _fix_intensity_ranges(metric: torch.nn.Module, fixed: torch.Tensor, moving: torch.Tensor) -> None:
    """Mutual information takes its intensity ranges from the unwarped images, once
    (as ITK's Mattes metric does): ranges recomputed from the warped image every
    iteration move the histogram bins under the optimizer. The ranges are the
    metric's own robust percentiles."""
    if not isinstance(metric, MILoss):
        return
    for name, image in (("fixed_range", fixed), ("moving_range", moving)):
        if getattr(metric, name) is None:
            low, high = robust_range(image, metric.percentiles)
            setattr(metric, name, (low, high if high > low else low + 1.0))


def nodeo_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    spacing_mm: Sequence[float],
    settings: NODEOSettings | None = None,
    progress: Optional[Callable[[dict], None]] = None,
    initial_displacement: Optional[torch.Tensor] = None,
) -> NODEOResult:
    """Optimize a NODEO flow that warps ``moving`` onto ``fixed``.

    Args:
        fixed: Tensor[1, 1, *S] (2D or 3D), float32.
        moving: Tensor[1, 1, *S] on the same grid.
        spacing_mm: voxel spacing of that grid per tensor axis ((z, y, x) in 3D), mm.
        settings: :class:`NODEOSettings`.
        progress: called after every iteration with a dict (level, iteration,
            iterations, loss and its terms).
        initial_displacement: optional u0, Tensor[1, ndim, *S] in voxels of this
            grid, fixed to moving (an earlier stage's map, e.g. MS-ODENet's). The
            flow then registers ``moving`` seen through u0: it minimizes the loss of
            ``moving(x + u(x) + u0(x + u(x)))``, resampling ``moving`` once rather
            than warping it by u0 first and again by u (each trilinear resampling
            blurs). The penalties act on the flow's own u.

    Returns:
        :class:`NODEOResult` with u such that ``warp(moving, u) ~ fixed``, or, with
        ``initial_displacement``, u the flow's own map, to be composed with u0 as
        ``u + warp(u0, u)``.
    """
    settings = settings or NODEOSettings()
    if fixed.shape != moving.shape:
        raise ValueError(f"nodeo_register(): 'fixed' {list(fixed.shape)} and 'moving' {list(moving.shape)} must match")
    if initial_displacement is not None and tuple(initial_displacement.shape) != (1, fixed.dim() - 2, *fixed.shape[2:]):
        raise ValueError(f"nodeo_register(): 'initial_displacement' {list(initial_displacement.shape)} must be "
                         f"{[1, fixed.dim() - 2, *fixed.shape[2:]]} (voxels on the images' grid)")
    # On a fork of torch's generator: the caller's random state is left as it was (core/random.py).
    with seeded(settings.seed, fixed.device):
        start = time.perf_counter()
        shape = tuple(fixed.shape[2:])
        spacing_mm = tuple(float(h) for h in spacing_mm)
        control_spacing_mm, smoothing_mm = resolved_velocity_scales(settings, spacing_mm)
        control_shape, control_spacing = _control_grid(shape, spacing_mm, control_spacing_mm)
        velocity = VelocityNetwork(control_shape, control_spacing, smoothing_mm, settings.hidden_channels)
        velocity = velocity.to(device=fixed.device, dtype=fixed.dtype)
        flow = NeuralODEFlow(velocity, settings.steps, settings.method, settings.adjoint)
        metric = make_metric(settings.metric, **settings.metric_options)
        _fix_intensity_ranges(metric, fixed, moving)
        # Adam's step is about the learning rate in parameter units: mm for the
        # coarse velocity. The state network's weights get a smaller one.
        groups = [{"params": [velocity.coarse_velocity], "lr": settings.learning_rate_mm}]
        if velocity.state_net is not None:
            groups.append({"params": velocity.state_net.parameters(), "lr": settings.learning_rate_mm * 0.05})
        optimizer = Adam(groups, amsgrad=True)
        history: list = []
        full_spacing = _per_axis(spacing_mm, fixed)

        for level_index, (factor, iterations) in enumerate(zip(settings.levels, settings.iterations)):
            level = pyramid_level(shape, spacing_mm, factor)
            initial_l = None
            if initial_displacement is not None:
                level_spacing = _per_axis(level.spacing_mm, fixed)
                initial_l = resample_to_shape(initial_displacement * full_spacing, level.shape) / level_spacing
            _fit_window_to_spacing(metric, settings, level.spacing_mm)
            _optimize_level(flow, optimizer, metric, settings, level, level_index, factor, iterations,
                            downsample_image(fixed, spacing_mm, level), downsample_image(moving, spacing_mm, level),
                            initial_l, control_spacing_mm, history, progress)
            # The next level's graph has other shapes: the freed one would mostly sit unused (core/memory.py).
            release_freed_memory()
        u_vox, inverse = _final_map(flow, settings, shape, spacing_mm, control_spacing_mm, full_spacing)
        return NODEOResult(u_vox, inverse, history, time.perf_counter() - start, flow)


def _fit_window_to_spacing(metric: torch.nn.Module, settings: NODEOSettings, spacing_mm: Sequence[float]) -> None:
    """Give LNCC's window about the same extent in mm along every axis of an anisotropic level.

    The default window is 9 voxels of the finest axis; an axis ``k`` times coarser gets the odd
    width nearest ``9 / k`` (at least 3), so that a thick-slice axis is not compared over a
    window several times longer than the in-plane ones. Isotropic levels, and windows the
    caller chose (``metric_options={"window": ...}``), are left as they are.
    """
    if not isinstance(metric, LNCCLoss) or "window" in settings.metric_options:
        return
    base = getattr(metric, "base_window", metric.window)
    if not isinstance(base, int):
        return
    metric.base_window = base
    finest = min(spacing_mm)
    widths = tuple(base if h == finest else max(3, 2 * int(round((base * finest / h - 1) / 2)) + 1)
                   for h in spacing_mm)
    metric.window = base if len(set(widths)) == 1 else widths


def _optimization_steps(settings: NODEOSettings, level_index: int) -> int:
    """Euler steps while optimizing pyramid level ``level_index`` (0 the coarsest).

    The coarse levels only set the start of the next one, which re-optimizes the same velocity
    field: measured on 6 pairs per task (benchmarks/README.md), 3 steps there instead of 4 keep
    Dice within 0.1 points and fold no voxel, and take about a tenth less time; 2 steps at the
    coarsest level, or at both coarse levels, fold voxels or lose 0.3 points on T1 to T2.
    """
    if level_index == len(settings.levels) - 1 or settings.coarse_steps is None:
        return settings.steps
    return min(settings.coarse_steps, settings.steps)


def _optimize_level(flow, optimizer, metric, settings: NODEOSettings, level, level_index: int, factor: float,
                    iterations: int, fixed_l: torch.Tensor, moving_l: torch.Tensor,
                    initial_l: Optional[torch.Tensor], control_spacing_mm: float, history: list,
                    progress: Optional[Callable[[dict], None]]) -> None:
    """Up to ``iterations`` Adam steps on one pyramid level (fewer once the convergence window is met)."""
    view = _per_axis(level.spacing_mm, fixed_l)
    flow_level = _flow_level(level, control_spacing_mm, settings.flow_spacing_ratio)
    flow_view = _per_axis(flow_level.spacing_mm, fixed_l)
    level_losses: list = []
    flow.steps = _optimization_steps(settings, level_index)
    for iteration in range(iterations):
        optimizer.zero_grad()
        u_mm, kinetic = flow(flow_level.shape, flow_level.spacing_mm)
        # mm to level voxels on the flow grid, before upsampling: the same linear map, on fewer voxels.
        u_vox = resample_to_shape(u_mm / view, level.shape)
        sampled = u_vox if initial_l is None else u_vox + ops.warp(initial_l, u_vox, "border")
        warped = ops.warp(moving_l, sampled, "zeros")
        similarity = metric(fixed_l, warped)
        # The penalties act on the flow's own grid, where the map is represented: on the
        # level grid it is only the linear interpolation of it, and there they would cost
        # two more full-resolution passes, forward and backward, per iteration.
        u_flow = u_mm / flow_view
        jacobian = ops.jacobian_penalty(u_flow, settings.jacobian_threshold)
        smoothness = ops.diffusion_energy(u_flow, flow_level.spacing_mm)
        loss = (
            similarity
            + settings.jacobian_weight * jacobian
            + settings.smoothness_weight * smoothness
            + settings.velocity_weight * kinetic
        )
        loss.backward()
        optimizer.step()
        record = {
            "level": level_index,
            "factor": factor,
            "iteration": iteration,
            "iterations": iterations,
            "loss": float(loss.detach()),
            "similarity": float(similarity.detach()),
            "jacobian": float(jacobian.detach()),
            "smoothness": float(smoothness.detach()),
            "kinetic": float(kinetic.detach()),
        }
        if record_iteration(record, history, level_losses, settings.convergence_window,
                            settings.convergence_threshold, progress):
            break


@torch.no_grad()
def _final_map(flow, settings: NODEOSettings, shape, spacing_mm, control_spacing_mm: float,
               full_spacing: torch.Tensor) -> tuple:
    """(u, its inverse), voxels of the full grid, of the optimized flow.

    The optimized velocity field is integrated with at least ``output_steps`` steps: a finer
    solution of the same ODE than the optimization needed, closer to its diffeomorphic limit.
    Measured (benchmarks/README.md): optimizing with 2 steps and returning 4 costs 2/3 of the
    time of 4 throughout and folds no voxel, but loses 0.1-0.3 Dice points on 6 pairs, so the
    default optimizes with 4.
    """
    flow.steps = max(settings.steps, settings.output_steps)
    final = pyramid_level(shape, spacing_mm, 1.0)
    flow_level = _flow_level(final, control_spacing_mm, settings.flow_spacing_ratio)
    u_mm, _ = flow(flow_level.shape, flow_level.spacing_mm)
    fields, _ = flow.velocity_history(flow_level.shape, flow_level.spacing_mm)
    flow_view = _per_axis(flow_level.spacing_mm, full_spacing)
    # Backward in time through the recorded fields gives a first inverse on
    # the flow grid; fixed-point iterations on the full grid make it accurate.
    w = torch.zeros_like(u_mm)
    for v in reversed(fields):
        w = w - ops.sample_at(v, w / flow_view, "border") / len(fields)
    u_vox = resample_to_shape(u_mm, shape) / full_spacing
    inverse = invert_displacement(u_vox, initial=resample_to_shape(w, shape) / full_spacing)
    return u_vox.detach(), inverse.detach()
