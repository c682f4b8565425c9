"""``register()``: the front door of the engine for SimpleITK and ITK images and image files.

It checks the options once (:class:`~.options.RegistrationOptions`), loads both images as
tensors on their grids, runs the engine (:func:`~.engine.register_images`) and converts its
toolkit-neutral answer with the adapter of the caller's toolkit
(:mod:`itk_odereg.adapters.sitk` or :mod:`itk_odereg.adapters.itk`).

The warped image is computed by the engine, in torch, by sampling the moving image at
``T(p)`` for every fixed voxel ``p``; the tests check that ``sitk.Resample``,
``itk.resample_image_filter`` and antsApplyTransforms reproduce it from the returned
transforms.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from ..adapters.result import RegistrationResult
from ..core.image import load_image
from .affine import AffineSettings
from .engine import register_images, working_resolution
from .nodeo import NODEOSettings
from .options import RegistrationOptions
from .stages import AFFINE_MODES, DEFORMABLE_STAGES

__all__ = ["RegistrationResult", "register", "METHODS", "AFFINE_MODES", "working_resolution"]

#: the deformable stages (:data:`.stages.DEFORMABLE_STAGES`), for ``method``.
METHODS = DEFORMABLE_STAGES


def register(
    fixed: Any,
    moving: Any,
    *,
    method: str = "nodeo",
    metric: str = "lncc",
    affine: Optional[str] = "affine",
    device: str | torch.device | None = "cpu",
    iterations: Optional[tuple[int, ...]] = None,
    steps: int = 4,
    seed: Optional[int] = 0,
    progress: bool | Callable[[dict], None] = False,
    resolution_mm: float | str | None = "auto",
    nodeo: Optional[NODEOSettings] = None,
    affine_settings: Optional[AffineSettings] = None,
    model: str = "bspline",
    reproducible: bool = False,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with NODEO after an affine pre-alignment.

    Args:
        fixed: the reference image: ``SimpleITK.Image``, ``itk.Image`` or a file path (2D or 3D, scalar).
        moving: the image to align; any grid (spacing, origin, direction, size).
        method: ``"nodeo"`` (per-pair neural-ODE optimization, default), ``"msodenet"``
            (a trained MS-ODENet model, see ``model``: a few solver steps, 3D only) or
            ``"msodenet+nodeo"`` (MS-ODENet, then NODEO refines) or ``"none"`` (no deformable
            stage: the affine alone); the registry is :data:`.stages.STAGES`.
        metric: ``"lncc"`` (local NCC, same contrast, default), ``"mse"``, ``"ngf"``
            (normalized gradient fields: different contrasts, recommended; its affine
            stage uses mutual information) or ``"mi"`` (Mattes mutual information for
            both stages; in our T1-to-T2 benchmark it aligns worse than ``"ngf"``).
        affine: ``"affine"`` (centres of mass, rigid, then affine; default), ``"rigid"``, or
            None to skip the pre-alignment (the images must already overlap).
        device: ``"cpu"`` or ``"cuda"``.
        iterations: NODEO iterations per pyramid level (coarse to fine); default (120, 60, 50).
        steps: Euler steps on [0, 1] while NODEO optimizes its finest level (the coarser levels
            take at most ``NODEOSettings.coarse_steps``, 3; the returned map integrates the
            optimized flow with at least 4, ``NODEOSettings.output_steps``).
        seed: random seed (None: a fresh seed each run, so runs differ; the one used is ``result.seed``).
            The caller's torch random state is left as it was either way.
        progress: True for a progress bar on stderr, or a callable receiving one dict per iteration.
        resolution_mm: NODEO works on a grid of about this spacing (mm) spanning the fixed image.
            ``"auto"`` (default): the fixed image's own grid, or 1 mm where the fixed image is
            finer than that (:func:`working_resolution`); None: always the fixed grid. Results
            are always on the fixed grid.
        nodeo: full :class:`NODEOSettings` (overrides ``metric``/``iterations``/``steps``/``seed``).
        affine_settings: full :class:`AffineSettings`.
        model: the MS-ODENet model of the ``msodenet`` methods: the path of a ``.pt``
            file written by ``itk-odereg train``, ``"RIGID.pt+DEFORMABLE.pt"``, or a shipped
            model name: ``"bspline"`` (the default: the affine stage already aligned the images,
            and the shipped rigid stage lowers Dice on aligned pairs, see benchmarks/README.md),
            ``"rigid+bspline"``, ``"rigid"``.
        reproducible: run the stages on one thread, so that the same seed gives bit-identical
            outputs whatever the thread count (by default the same seed and thread count do; two
            thread counts sum in different orders, see docs/methods.md, "Reproducibility").

    Returns:
        :class:`RegistrationResult` in the caller's image type. Transforms map fixed
        points to moving points (ITK convention, LPS mm) and work unchanged in
        ``sitk.Resample(moving, fixed, result.transform)``.

    Raises:
        ValueError / TypeError: bad images (dimension, vector pixels, empty, NaN,
            unreadable file) or options, with the argument named.
        RuntimeError: ``device='cuda'`` without a CUDA device.
    """
    start = time.perf_counter()
    options = RegistrationOptions.create(
        "register()", method=method, metric=metric, affine=affine, device=device,
        iterations=iterations, steps=steps, seed=seed, resolution_mm=resolution_mm, nodeo=nodeo,
        affine_settings=affine_settings, model=model, reproducible=reproducible)
    return register_loaded(load_image(fixed, "fixed", "register()"), load_image(moving, "moving", "register()"),
                           options, progress=progress, started=start)


def register_loaded(fixed, moving, options: RegistrationOptions, *, progress: bool | Callable[[dict], None] = False,
                    caller: str = "register()", started: Optional[float] = None) -> RegistrationResult:
    """:func:`register` for images already loaded (:func:`itk_odereg.core.image.load_image`) and checked options.

    The result is in the toolkit of ``fixed`` (SimpleITK for a file path).
    """
    from ..adapters import itk as itk_adapter
    from ..adapters import sitk as sitk_adapter

    start = time.perf_counter() if started is None else started
    load_seconds = time.perf_counter() - start
    registration = register_images(fixed, moving, options, progress=progress, caller=caller)
    t0 = time.perf_counter()
    field_mm = registration.field_mm()
    warped = registration.warp(moving.tensor, moving.grid, field_mm=field_mm)
    adapter = itk_adapter if fixed.kind == "itk" else sitk_adapter
    result = adapter.registration_result(registration, warped, field_mm)
    timings = result.timings = {"load": load_seconds, **result.timings}
    timings["outputs"] = timings.get("outputs", 0.0) + time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    return result
