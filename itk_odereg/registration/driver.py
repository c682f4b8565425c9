"""The registration driver: one engine beneath every interface (Python, ITK, SimpleITK, ANTs-style, CLI).

``register(fixed, moving)`` runs, in physical space:

1. input checks and intensity normalization;
2. affine pre-alignment (centres of mass, rigid, affine; :mod:`.affine`);
3. NODEO on a working grid, a corner-aligned resampling of the fixed grid at
   ``resolution_mm`` (:mod:`.nodeo`), with the moving image brought onto it
   through the affine;
4. conversion of the result to ITK's convention: transforms that map fixed
   points to moving points in LPS mm, as the composite ``[affine, warp]``
   (the warp acts first), their inverse, and the dense displacement field of
   the whole map, all on the fixed grid.

The warped image is computed here in torch, by sampling the moving image at
``T(p)`` for every fixed voxel ``p``; the tests check that ``sitk.Resample``,
``itk.resample_image_filter`` and antsApplyTransforms reproduce it from the
returned transforms.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from ..core.grid import ImageGrid
from ..core.image import check_registrable, load_image, tensor_to_input_kind
from .. import transforms as tx
from .affine import AffineSettings, affine_register
from .nodeo import NODEOSettings, nodeo_register
from .pyramid import downsample_image, pyramid_level, resample_to_shape

__all__ = ["RegistrationResult", "register", "METHODS", "AFFINE_MODES"]

METHODS = ("nodeo", "msodenet", "msodenet+nodeo")
AFFINE_MODES = ("affine", "rigid", None)
METRICS = ("lncc", "mse", "mi", "ngf")


@dataclass
class RegistrationResult:
    """What :func:`register` returns, in the caller's image type (SimpleITK for file paths).

    Attributes:
        warped: the moving image resampled onto the fixed grid (linear).
        transform: fixed -> moving points (LPS mm): composite [affine, displacement field].
        inverse_transform: moving -> fixed points: composite [inverse field, inverse affine].
        displacement_field: vector image on the fixed grid, mm, components (x, y, z):
            T(p) - p for the whole map, affine included.
        inverse_displacement_field: vector image on the fixed grid, mm: the
            deformable part's inverse (used by ``inverse_transform``).
        jacobian_determinant: det(I + Du) of the deformable part on the fixed grid
            (the affine's determinant is the constant ``affine_determinant``).
        affine_matrix, affine_translation: T_affine(p) = A p + t, LPS mm.
        loss_history: per-iteration records of both stages.
        timings: wall seconds per stage.
        folding_percent: % of fixed voxels with det J <= 0.
    """

    warped: Any
    transform: Any
    inverse_transform: Any
    displacement_field: Any
    inverse_displacement_field: Any
    jacobian_determinant: Any
    affine_matrix: np.ndarray
    affine_translation: np.ndarray
    loss_history: list
    timings: dict
    folding_percent: float
    fixed_grid: ImageGrid = field(repr=False, default=None)
    deformable_field_mm: np.ndarray = field(repr=False, default=None)   # (z, y, x, 3), deformable part only
    inverse_field_mm: np.ndarray = field(repr=False, default=None)

    @property
    def affine_determinant(self) -> float:
        return float(np.linalg.det(self.affine_matrix))


def _normalize_intensity(image: torch.Tensor) -> torch.Tensor:
    """Map the 1st..99th percentile of the foreground to [0, 1] (no clipping)."""
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 200_000)]
    lo, hi = torch.quantile(sample.double(), torch.tensor([0.01, 0.99], dtype=torch.float64))
    scale = float(hi - lo) if float(hi - lo) > 0 else 1.0
    return (image - float(lo)) / scale


def _resolve_device(device: str | torch.device | None, caller: str = "register()") -> torch.device:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{caller}: device '{device}' was requested but torch.cuda.is_available() is False "
            "(no CUDA device, or a CPU-only torch). Use device='cpu'."
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{caller}: 'device' must be 'cpu' or 'cuda', got '{device}'")
    return device


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


def _working_grid(grid: ImageGrid, resolution_mm: Optional[float]):
    """Corner-aligned grid at about ``resolution_mm`` spanning the fixed grid's voxel centres.

    Returns the grid and its :class:`PyramidLevel` relative to the fixed grid
    (None when the fixed grid itself is used).
    """
    if resolution_mm is None or resolution_mm <= min(grid.spacing):
        return grid, None
    factor = resolution_mm / min(grid.spacing)
    level = pyramid_level(grid.shape, grid.spacing[::-1], factor)
    return ImageGrid(level.shape[::-1], level.spacing_mm[::-1], grid.origin, grid.direction), level


def _sample_at_points(image: torch.Tensor, grid: ImageGrid, world: torch.Tensor, out_shape) -> torch.Tensor:
    """Linear samples of ``image`` (on ``grid``) at physical points [P, d] (x, y, z).

    Follows ITK's ``LinearInterpolateImageFunction`` as used by ``sitk.Resample``
    with default value 0: a point is inside when its continuous index lies in
    [-0.5, size - 0.5] on every axis, and between the outermost voxel centre
    and that edge the edge value is repeated; outside, the value is 0.
    """
    ndim = grid.ndim
    w2v = torch.as_tensor(grid.world_to_voxel_matrix_torch_order(), dtype=world.dtype, device=world.device)
    index = world @ w2v[:-1, :-1].T + w2v[:-1, -1]
    shape = grid.shape
    norm = [2 * index[:, d] / max(shape[d] - 1, 1) - 1 for d in range(ndim)]
    sample_grid = torch.stack(norm[::-1], -1).view(1, *out_shape, ndim).to(image.dtype)
    values = F.grid_sample(image, sample_grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = torch.ones(index.shape[0], dtype=torch.bool, device=index.device)
    for d in range(ndim):
        inside &= (index[:, d] >= -0.5) & (index[:, d] <= shape[d] - 0.5)
    return values * inside.view(1, 1, *out_shape).to(values.dtype)


def _world_points(grid: ImageGrid, device) -> torch.Tensor:
    return torch.as_tensor(grid.world_points().reshape(-1, grid.ndim), dtype=torch.float64, device=device)


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
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with NODEO after an affine pre-alignment.

    Args:
        fixed: the reference image: ``SimpleITK.Image``, ``itk.Image`` or a file path (2D or 3D, scalar).
        moving: the image to align; any grid (spacing, origin, direction, size).
        method: ``"nodeo"`` (per-pair neural-ODE optimization, default), ``"msodenet"``
            (a trained MS-ODENet model, see ``model``: a few solver steps, 3D only) or
            ``"msodenet+nodeo"`` (MS-ODENet, then NODEO refines).
        metric: ``"lncc"`` (local NCC, same contrast, default), ``"mse"``, ``"ngf"``
            (normalized gradient fields: different contrasts, recommended; its affine
            stage uses mutual information) or ``"mi"`` (Mattes mutual information for
            both stages; in our T1-to-T2 benchmark it aligns worse than ``"ngf"``).
        affine: ``"affine"`` (centres of mass, rigid, then affine; default), ``"rigid"``, or
            None to skip the pre-alignment (the images must already overlap).
        device: ``"cpu"`` or ``"cuda"``.
        iterations: NODEO iterations per pyramid level (coarse to fine); default (150, 100, 50).
        steps: Euler steps on [0, 1] while NODEO optimizes (the returned map integrates the
            optimized flow with at least 4, ``NODEOSettings.output_steps``).
        seed: random seed (None: not seeded).
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

    Returns:
        :class:`RegistrationResult` in the caller's image type. Transforms map fixed
        points to moving points (ITK convention, LPS mm) and work unchanged in
        ``sitk.Resample(moving, fixed, result.transform)``.

    Raises:
        ValueError / TypeError: bad images (dimension, vector pixels, empty, NaN,
            unreadable file) or options, with the argument named.
        RuntimeError: ``device='cuda'`` without a CUDA device.
    """
    timings: dict = {}
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f'register(): invalid method "{method}". Must be one of {list(METHODS)}')
    if metric not in METRICS:
        raise ValueError(f'register(): invalid metric "{metric}". Must be one of {list(METRICS)}')
    if method != "nodeo":
        from ..msodenet.pretrained import MODELS, is_model_name

        if not is_model_name(model):
            raise ValueError(f'register(): invalid model "{model}". Must be one of {list(MODELS)} '
                             "or the path of a .pt file written by `itk-odereg train`")
    if affine not in AFFINE_MODES:
        raise ValueError(f'register(): invalid affine "{affine}". Must be one of {list(AFFINE_MODES)}')
    dev = _resolve_device(device)
    fixed_in = load_image(fixed, "fixed", "register()")
    moving_in = load_image(moving, "moving", "register()")
    check_registrable(fixed_in.tensor, "fixed", "register()")
    check_registrable(moving_in.tensor, "moving", "register()")
    if fixed_in.grid.ndim != moving_in.grid.ndim:
        raise ValueError(
            f"register(): 'fixed' is {fixed_in.grid.ndim}D but 'moving' is {moving_in.grid.ndim}D; "
            "both must have the same dimension"
        )
    ndim = fixed_in.grid.ndim
    if method != "nodeo" and ndim != 3:
        raise ValueError(f"register(): method '{method}' needs 3D images (the shipped MS-ODENet models are 3D); "
                         f"got {ndim}D images: use method='nodeo'")
    fixed_grid, moving_grid = fixed_in.grid, moving_in.grid
    fixed_t = _normalize_intensity(fixed_in.tensor).to(dev)
    moving_t = _normalize_intensity(moving_in.tensor).to(dev)
    report = _progress_reporter(progress)
    timings["load"] = time.perf_counter() - start

    # 1. Affine.
    t0 = time.perf_counter()
    if affine is None:
        A, t = np.eye(ndim), np.zeros(ndim)
        affine_history: list = []
    else:
        settings = affine_settings or AffineSettings()
        if settings.metric is None:
            # NGF compares edge directions, which only overlap once the images
            # are nearly aligned: the affine stage, which must capture large
            # misalignments, uses mutual information for it.
            settings = replace(settings, metric="mi" if metric == "ngf" else metric)
        if affine == "rigid":
            settings = replace(settings, stages=("rigid",))
        result = affine_register(fixed_t, fixed_grid.voxel_to_world_matrix_torch_order(), moving_t,
                                 moving_grid.voxel_to_world_matrix_torch_order(), settings,
                                 progress=(lambda r: report("affine", r)) if report else None)
        A, t = result.matrix, result.translation
        affine_history = result.loss_history
    timings["affine"] = time.perf_counter() - t0

    # 2. NODEO on the working grid.
    t0 = time.perf_counter()
    work_grid, work_level = _working_grid(fixed_grid, working_resolution(resolution_mm, fixed_grid))
    fixed_w = fixed_t if work_level is None else downsample_image(fixed_t, fixed_grid.spacing[::-1], work_level)
    A_t = torch.as_tensor(A, dtype=torch.float64, device=dev)
    t_t = torch.as_tensor(t, dtype=torch.float64, device=dev)
    work_points = _world_points(work_grid, dev)
    moving_w = _sample_at_points(moving_t, moving_grid, work_points @ A_t.T + t_t, work_grid.shape)
    nodeo_settings = nodeo or NODEOSettings(metric=metric, steps=steps, seed=seed)
    if iterations is not None:
        iterations = tuple(int(i) for i in iterations)
        if not 1 <= len(iterations) <= len(nodeo_settings.levels) or any(i < 0 for i in iterations):
            raise ValueError(
                f"register(): 'iterations' must list 1 to {len(nodeo_settings.levels)} non-negative counts "
                f"(one per pyramid level {nodeo_settings.levels}, coarse to fine), got {list(iterations)}"
            )
        nodeo_settings = replace(nodeo_settings, iterations=tuple(iterations),
                                 levels=nodeo_settings.levels[-len(iterations):])
    deformable = _deformable_stage(method, fixed_w, moving_w, work_grid.spacing[::-1], nodeo_settings,
                                   (lambda r: report("nodeo", r)) if report else None, timings, model)
    elapsed = time.perf_counter() - t0
    if method == "msodenet":
        timings["msodenet"] = elapsed
    else:
        timings["nodeo"] = elapsed - timings.get("msodenet", 0.0)

    # 3. Back to the fixed grid and to ITK's convention.
    t0 = time.perf_counter()
    scale = torch.tensor([w / f for w, f in zip(work_grid.spacing[::-1], fixed_grid.spacing[::-1])],
                         dtype=deformable.displacement.dtype, device=dev).view(1, ndim, *([1] * ndim))
    u_fixed = resample_to_shape(deformable.displacement * scale, fixed_grid.shape)
    w_fixed = resample_to_shape(deformable.inverse_displacement * scale, fixed_grid.shape)
    field_mm = tx.voxel_displacement_to_physical(u_fixed[0].double().cpu(), fixed_grid)
    inverse_mm = tx.voxel_displacement_to_physical(w_fixed[0].double().cpu(), fixed_grid)
    # T(p) - p = A (p + u(p)) + t - p, built in place: these (voxels x d) float64 arrays are the
    # largest of the output stage, and every temporary of them raised the peak memory.
    points = fixed_grid.world_points()
    total = points @ (A - np.eye(ndim)).T
    total += t
    total += field_mm @ A.T
    det = ops.jacobian_determinant(u_fixed.double())[0].cpu().numpy()

    mapped = torch.from_numpy(points.reshape(-1, ndim)).to(dev)
    mapped += torch.from_numpy(total.reshape(-1, ndim)).to(dev)
    del points
    warped = _sample_at_points(moving_in.tensor.to(dev), moving_grid, mapped, fixed_grid.shape)
    del mapped

    kind = fixed_in.kind if fixed_in.kind != "path" else "sitk"
    affine_tx_sitk = tx.affine_matrix_to_sitk(A, t)
    if kind == "itk":
        forward = tx.itk_composite((A, t), tx.itk_displacement_transform(field_mm, fixed_grid))
        inverse = _itk_inverse(A, t, inverse_mm, fixed_grid)
        field_image = tx.displacement_field_itk_image(total, fixed_grid)
        inverse_image = tx.displacement_field_itk_image(inverse_mm, fixed_grid)
    else:
        forward = tx.sitk_composite(affine_tx_sitk, tx.sitk_displacement_transform(field_mm, fixed_grid))
        inverse = _sitk_inverse(A, t, inverse_mm, fixed_grid)
        field_image = tx.displacement_field_image(total, fixed_grid)
        inverse_image = tx.displacement_field_image(inverse_mm, fixed_grid)
    result = RegistrationResult(
        warped=tensor_to_input_kind(warped.cpu(), fixed_grid, kind),
        transform=forward,
        inverse_transform=inverse,
        displacement_field=field_image,
        inverse_displacement_field=inverse_image,
        jacobian_determinant=tensor_to_input_kind(torch.from_numpy(det)[None, None], fixed_grid, kind),
        affine_matrix=A,
        affine_translation=t,
        loss_history=[dict(r, stage="affine") if "stage" not in r else r for r in affine_history]
        + [dict(r, stage="nodeo") for r in deformable.loss_history],
        timings=timings,
        folding_percent=float((det <= 0).mean() * 100.0),
        fixed_grid=fixed_grid,
        deformable_field_mm=field_mm,
        inverse_field_mm=inverse_mm,
    )
    timings["outputs"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    if report:
        report.close()
    return result


def _deformable_stage(method, fixed_w, moving_w, spacing_mm, nodeo_settings, progress, timings, model):
    """Displacement (fixed to moving, voxels of the working grid) and its inverse from the chosen method."""
    if method == "nodeo":
        return nodeo_register(fixed_w, moving_w, spacing_mm, nodeo_settings, progress=progress)
    from ..msodenet.pretrained import msodenet_register

    learned = msodenet_register(fixed_w, moving_w, spacing_mm, model)
    timings["msodenet"] = learned.seconds
    if method == "msodenet":
        return learned
    # NODEO refines the learned map: it registers the moving image seen through
    # u0 (resampled once, not warped by u0 and again by u_n), and the maps
    # compose, x -> x + u_n(x) -> (that) + u0(that).
    u0, w0 = learned.displacement, learned.inverse_displacement
    refined = nodeo_register(fixed_w, moving_w, spacing_mm, nodeo_settings, progress=progress,
                             initial_displacement=u0)
    refined.displacement = refined.displacement + ops.warp(u0, refined.displacement, "border")
    refined.inverse_displacement = w0 + ops.warp(refined.inverse_displacement, w0, "border")
    return refined


# The inverse maps a moving point q to fixed space: the inverse affine acts
# first, then the inverse warp. Both toolkits apply the last-added transform
# first, so the inverse warp is added first.
def _inverse_affine(A, t):
    inv_A = np.linalg.inv(A)
    return inv_A, -inv_A @ t


def _sitk_inverse(A, t, inverse_mm, grid):
    import SimpleITK as sitk

    composite = sitk.CompositeTransform(grid.ndim)
    composite.AddTransform(tx.sitk_displacement_transform(inverse_mm, grid))
    composite.AddTransform(tx.affine_matrix_to_sitk(*_inverse_affine(A, t)))
    return composite


def _itk_inverse(A, t, inverse_mm, grid):
    import itk

    composite = itk.CompositeTransform[itk.D, grid.ndim].New()
    composite.AddTransform(tx.itk_displacement_transform(inverse_mm, grid))
    composite.AddTransform(tx.affine_matrix_to_itk(*_inverse_affine(A, t)))
    return composite


class _progress_reporter:
    """Progress bar on stderr (or a user callback): one line per stage, updated in place."""

    def __new__(cls, progress):
        if not progress:
            return None
        return super().__new__(cls)

    def __init__(self, progress) -> None:
        self.callback = progress if callable(progress) else None
        self.last_stage = None
        self.started = time.perf_counter()

    def __bool__(self) -> bool:
        return True

    def __call__(self, stage: str, record: dict) -> None:
        if self.callback is not None:
            self.callback(dict(record, stage=record.get("stage", stage)))
            return
        import sys

        label = record.get("stage", stage)
        done = record["iteration"] + 1
        total = record["iterations"]
        width = 30
        filled = int(width * done / total)
        if "level" in record:
            level = f" level {record['level'] + 1}"
        else:
            level = " " + "x".join(f"{h:.1f}" for h in record.get("level_spacing_mm", ())) + " mm"
        sys.stderr.write(
            f"\r{label:>7s}{level}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"loss {record['loss']:.4f}  {time.perf_counter() - self.started:6.1f} s"
        )
        if done == total or record.get("converged"):
            sys.stderr.write(" (converged)\n" if record.get("converged") else "\n")
        sys.stderr.flush()

    def close(self) -> None:
        pass
