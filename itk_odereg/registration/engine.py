"""The registration engine: tensors on grids in, one toolkit-neutral :class:`Registration` out.

``register_images(fixed, moving, options)`` runs, in physical space:

1. input checks and intensity normalization;
2. the linear stage (centres of mass, rigid, affine; :mod:`.affine`), on each image's own grid;
3. the deformable stage (:data:`.stages.DEFORMABLE_STAGES`) on a working grid, a corner-aligned
   resampling of the fixed grid at about ``resolution_mm``, with the moving image brought onto
   it through the affine;
4. the displacement and its inverse brought back onto the fixed grid.

It knows nothing of SimpleITK, ITK or ANTs: the adapters (:mod:`itk_odereg.adapters`)
convert its answer, and :func:`itk_odereg.registration.driver.register` is the front
door that loads the images and returns them in the caller's toolkit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from ..core.device import resolve_device
from ..core.grid import ImageGrid
from ..core.image import LoadedImage, check_registrable
from ..core.intensity import normalize_intensity
from ..core.memory import release_freed_memory
from ..core.random import fresh_seed
from ..core.sampling import sample_at_points
from .options import RegistrationOptions
from .progress import ProgressReporter
from .pyramid import PyramidLevel, downsample_image, resample_to_shape
from .result import Registration
from .stages import STAGES, StageProblem

__all__ = ["register_images", "working_resolution", "working_grid", "FINEST_AUTO_RESOLUTION_MM",
           "MIN_VOXELS_PER_AXIS", "AFFINE_SCALE_RANGE", "ImplausibleTransformWarning"]

#: the fewest voxels an input may have along any axis: with fewer, the image gradients that
#: drive every stage are one-sided differences over the whole image, and the affine stage
#: fits scales and shears to noise (a random 3x3x3 image registered to itself got scales
#: of 1.19 and 0.85).
MIN_VOXELS_PER_AXIS = 4

#: singular values of the affine's linear part outside this range are reported
#: (:class:`ImplausibleTransformWarning`): brains of two people, or of one person at two
#: times, differ in scale by far less than a factor of 2.
AFFINE_SCALE_RANGE = (0.5, 2.0)


class ImplausibleTransformWarning(UserWarning):
    """The registration finished, but its affine part scales or folds space implausibly."""


def _check_size(grid: ImageGrid, name: str, caller: str) -> None:
    if min(grid.size) < MIN_VOXELS_PER_AXIS:
        raise ValueError(f"{caller}: '{name}' has only {min(grid.size)} voxel(s) along an axis (size {grid.size}, "
                         f"ITK order x, y[, z]); registration needs at least {MIN_VOXELS_PER_AXIS} per axis")


def _check_affine(A: np.ndarray, caller: str) -> None:
    scales = np.linalg.svd(A, compute_uv=False)
    det = float(np.linalg.det(A))
    low, high = AFFINE_SCALE_RANGE
    if det <= 0 or scales.min() < low or scales.max() > high:
        warnings.warn(
            f"{caller}: the affine stage found an implausible transform (scales {', '.join(f'{v:.3g}' for v in scales)}, "
            f"determinant {det:.3g}; expected scales within [{low}, {high}] and a positive determinant). The images "
            "may not overlap enough, be too small or too thin along an axis, or show different anatomy: check the "
            "result, or register with affine='rigid' (--affine rigid)", ImplausibleTransformWarning, stacklevel=3)


FINEST_AUTO_RESOLUTION_MM = 1.0


def working_resolution(resolution_mm: float | str | None, grid: ImageGrid, caller: str = "register()"):
    """The working spacing in mm (None: the fixed grid itself) for a ``resolution_mm`` option.

    ``"auto"`` follows the input: a fixed image at 1 mm or coarser registers on its own grid
    (at 1 mm the defaults reach greedy's Dice, where a 2 mm working grid lost about 2.5 Dice
    points; see benchmarks/README.md), a finer one on a 1 mm grid.
    """
    if isinstance(resolution_mm, str):
        if resolution_mm != "auto":
            raise ValueError(f"{caller}: 'resolution_mm' must be a number (mm), 'auto' or None, got {resolution_mm!r}")
        finest = min(grid.spacing)
        return None if finest >= FINEST_AUTO_RESOLUTION_MM else FINEST_AUTO_RESOLUTION_MM
    return resolution_mm


def working_grid(grid: ImageGrid, resolution_mm: Optional[float]):
    """Corner-aligned grid at about ``resolution_mm`` spanning the fixed grid's voxel centres.

    Returns the grid and its :class:`~.pyramid.PyramidLevel` relative to the fixed grid
    (None when the fixed grid itself is used).
    """
    if resolution_mm is None or resolution_mm <= min(grid.spacing):
        return grid, None
    factor = resolution_mm / min(grid.spacing)
    work = grid.corner_aligned(factor)
    return work, PyramidLevel(float(factor), work.shape, tuple(float(h) for h in work.spacing[::-1]))


def _check_working_grid(grid: ImageGrid, options: RegistrationOptions, caller: str) -> None:
    """Refuse a ``resolution_mm`` so coarse that the working grid loses an axis the fixed image has."""
    if options.method == "none":
        return
    resolution = working_resolution(options.resolution_mm, grid, caller)
    work, _ = working_grid(grid, resolution)
    if min(work.size) < MIN_VOXELS_PER_AXIS:
        extent = [round(float((n - 1) * h), 1) for n, h in zip(grid.size, grid.spacing)]
        finest_ok = min(extent) / (MIN_VOXELS_PER_AXIS - 1)
        raise ValueError(f"{caller}: 'resolution_mm' {resolution:g} mm gives a working grid of size {work.size} "
                         f"(ITK order x, y[, z]) for a fixed image spanning {extent} mm; the deformable stage "
                         f"needs at least {MIN_VOXELS_PER_AXIS} voxels per axis: use at most {finest_ok:.3g} mm, "
                         "or 'auto'")


def _world_points(grid: ImageGrid, device) -> torch.Tensor:
    return torch.as_tensor(grid.world_points().reshape(-1, grid.ndim), dtype=torch.float64, device=device)


def _linear_stage(fixed_t, moving_t, fixed_grid: ImageGrid, moving_grid: ImageGrid, options: RegistrationOptions,
                  report, timings: dict):
    """(A, t, loss history) of the linear stage on the images' own grids; the identity without one."""
    ndim = fixed_grid.ndim
    if options.affine is None:
        return np.eye(ndim), np.zeros(ndim), []
    linear = STAGES[options.affine].run(StageProblem(
        fixed_t, moving_t, fixed_grid.voxel_to_world_matrix_torch_order(),
        moving_grid.voxel_to_world_matrix_torch_order(), fixed_grid.spacing[::-1], options,
        progress=report.stage("affine") if report else None, timings=timings))
    history = [dict(r, stage="affine") if "stage" not in r else r for r in linear.loss_history]
    return linear.affine_matrix, linear.affine_translation, history


def _deformable_stage(fixed_t, moving_t, fixed_grid: ImageGrid, moving_grid: ImageGrid, A, t,
                      options: RegistrationOptions, report, timings: dict, caller: str):
    """(working grid, stage result): the deformable stage on the working grid, the moving image
    resampled once through the affine ``p -> A p + t`` onto it."""
    device = fixed_t.device
    work_grid, work_level = working_grid(fixed_grid, working_resolution(options.resolution_mm, fixed_grid, caller))
    fixed_w = fixed_t if work_level is None else downsample_image(fixed_t, fixed_grid.spacing[::-1], work_level)
    A_t = torch.as_tensor(A, dtype=torch.float64, device=device)
    t_t = torch.as_tensor(t, dtype=torch.float64, device=device)
    moving_w = sample_at_points(moving_t, moving_grid, _world_points(work_grid, device) @ A_t.T + t_t, work_grid.shape)
    work_to_world = work_grid.voxel_to_world_matrix_torch_order()
    result = STAGES[options.method].run(StageProblem(
        fixed_w, moving_w, work_to_world, work_to_world, work_grid.spacing[::-1], options,
        progress=report.stage("nodeo") if report else None, timings=timings))
    return work_grid, result


@contextlib.contextmanager
def _threads(count: Optional[int]):
    """torch's intra-op thread count set to ``count`` for the block (None: left as it is)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_stages(fixed_t, moving_t, fixed_grid: ImageGrid, moving_grid: ImageGrid, options: RegistrationOptions,
                report, timings: dict, caller: str):
    """The linear stage, then the deformable stage on the working grid; fills ``timings``."""
    t0 = time.perf_counter()
    A, t, linear_history = _linear_stage(fixed_t, moving_t, fixed_grid, moving_grid, options, report, timings)
    _check_affine(A, caller)
    release_freed_memory()   # each stage's temporaries have their own shapes (core/memory.py)
    timings["affine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    work_grid, deformable = _deformable_stage(fixed_t, moving_t, fixed_grid, moving_grid, A, t, options, report,
                                              timings, caller)
    release_freed_memory()
    elapsed = time.perf_counter() - t0
    if options.method == "msodenet":
        timings["msodenet"] = elapsed
    elif options.method != "none":
        timings["nodeo"] = elapsed - timings.get("msodenet", 0.0)
    if report:
        report.close()
    return A, t, linear_history, work_grid, deformable


def register_images(
    fixed: LoadedImage,
    moving: LoadedImage,
    options: RegistrationOptions,
    *,
    progress: bool | Callable[[dict], None] = False,
    caller: str = "register()",
) -> Registration:
    """Register ``moving`` to ``fixed`` (both loaded, :func:`itk_odereg.core.image.load_image`).

    Args:
        fixed, moving: images as tensors on their grids (any spacing, origin, direction, size).
        options: checked :class:`RegistrationOptions`.
        progress: True for a progress bar on stderr, or a callable receiving one dict per iteration.
        caller: the public entry point, for error messages.

    Returns:
        :class:`Registration` on the fixed grid: transforms map fixed points to moving points (LPS mm).

    Raises:
        ValueError: unusable images (empty, constant, NaN; different dimensions; MS-ODENet on 2D).
        RuntimeError: CUDA requested without a CUDA device.
    """
    timings: dict = {}
    if options.seed is None:
        options = dataclasses.replace(options, seed=fresh_seed())
    device = resolve_device(options.device, caller)
    check_registrable(fixed.tensor, "fixed", caller)
    check_registrable(moving.tensor, "moving", caller)
    _check_size(fixed.grid, "fixed", caller)
    _check_size(moving.grid, "moving", caller)
    _check_working_grid(fixed.grid, options, caller)
    if fixed.grid.ndim != moving.grid.ndim:
        raise ValueError(f"{caller}: 'fixed' is {fixed.grid.ndim}D but 'moving' is {moving.grid.ndim}D; "
                         "both must have the same dimension")
    ndim = fixed.grid.ndim
    if options.method.startswith("msodenet") and ndim != 3:
        raise ValueError(f"{caller}: method '{options.method}' needs 3D images (the shipped MS-ODENet models are 3D); "
                         f"got {ndim}D images: use method='nodeo'")
    fixed_grid, moving_grid = fixed.grid, moving.grid
    fixed_t = normalize_intensity(fixed.tensor).to(device)
    moving_t = normalize_intensity(moving.tensor).to(device)
    report = ProgressReporter.create(progress)

    # Reproducible mode: one thread, so that no sum depends on how the work was split.
    with _threads(1 if options.reproducible else None):
        A, t, linear_history, work_grid, deformable = _run_stages(
            fixed_t, moving_t, fixed_grid, moving_grid, options, report, timings, caller)

        # Back onto the fixed grid (voxels of the fixed grid, tensor axis order).
        t0 = time.perf_counter()
        scale = torch.tensor([w / f for w, f in zip(work_grid.spacing[::-1], fixed_grid.spacing[::-1])],
                             dtype=deformable.displacement.dtype, device=device).view(1, ndim, *([1] * ndim))
        displacement = resample_to_shape(deformable.displacement * scale, fixed_grid.shape)
        inverse = resample_to_shape(deformable.inverse_displacement * scale, fixed_grid.shape)
        timings["outputs"] = time.perf_counter() - t0
    return Registration(
        fixed_grid=fixed_grid,
        moving_grid=moving_grid,
        affine_matrix=A,
        affine_translation=t,
        displacement=displacement,
        inverse_displacement=inverse,
        loss_history=tuple(linear_history + list(deformable.loss_history)),
        timings=timings,
        seed=options.seed,
    )
