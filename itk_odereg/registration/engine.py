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

import time
from typing import Callable, Optional

import numpy as np
import torch

from ..core.device import resolve_device
from ..core.grid import ImageGrid
from ..core.image import LoadedImage, check_registrable
from ..core.intensity import normalize_intensity
from .options import RegistrationOptions
from .progress import ProgressReporter
from .pyramid import PyramidLevel, downsample_image, resample_to_shape
from ..core.sampling import sample_at_points
from .result import Registration
from .stages import STAGES, StageProblem

__all__ = ["register_images", "working_resolution", "working_grid", "FINEST_AUTO_RESOLUTION_MM"]

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


def _world_points(grid: ImageGrid, device) -> torch.Tensor:
    return torch.as_tensor(grid.world_points().reshape(-1, grid.ndim), dtype=torch.float64, device=device)


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
    device = resolve_device(options.device, caller)
    check_registrable(fixed.tensor, "fixed", caller)
    check_registrable(moving.tensor, "moving", caller)
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

    # 1. The linear stage.
    t0 = time.perf_counter()
    if options.affine is None:
        A, t = np.eye(ndim), np.zeros(ndim)
        linear_history: list = []
    else:
        linear = STAGES[options.affine].run(StageProblem(
            fixed_t, moving_t, fixed_grid.voxel_to_world_matrix_torch_order(),
            moving_grid.voxel_to_world_matrix_torch_order(), fixed_grid.spacing[::-1], options,
            progress=report.stage("affine") if report else None, timings=timings))
        A, t = linear.affine_matrix, linear.affine_translation
        linear_history = [dict(r, stage="affine") if "stage" not in r else r for r in linear.loss_history]
    timings["affine"] = time.perf_counter() - t0

    # 2. The deformable stage, on the working grid.
    t0 = time.perf_counter()
    work_grid, work_level = working_grid(fixed_grid, working_resolution(options.resolution_mm, fixed_grid, caller))
    fixed_w = fixed_t if work_level is None else downsample_image(fixed_t, fixed_grid.spacing[::-1], work_level)
    A_t = torch.as_tensor(A, dtype=torch.float64, device=device)
    t_t = torch.as_tensor(t, dtype=torch.float64, device=device)
    moving_w = sample_at_points(moving_t, moving_grid, _world_points(work_grid, device) @ A_t.T + t_t, work_grid.shape)
    work_to_world = work_grid.voxel_to_world_matrix_torch_order()
    deformable = STAGES[options.method].run(StageProblem(
        fixed_w, moving_w, work_to_world, work_to_world, work_grid.spacing[::-1], options,
        progress=report.stage("nodeo") if report else None, timings=timings))
    elapsed = time.perf_counter() - t0
    if options.method == "msodenet":
        timings["msodenet"] = elapsed
    elif options.method != "none":
        timings["nodeo"] = elapsed - timings.get("msodenet", 0.0)
    if report:
        report.close()

    # 3. Back onto the fixed grid (voxels of the fixed grid, tensor axis order).
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
    )
