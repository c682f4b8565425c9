"""Quality-control figure of a registration, laid out like Figure 1 of the NODEO paper.

:func:`qc_figure` writes one PNG:

* rows: the three orthogonal mid slices of the fixed grid (axial, coronal,
  sagittal; one row for a 2D image);
* columns: fixed, moving, warped (moving after registration), the Jacobian
  determinant of the deformation (diverging colour map centred at 1, with a
  colour bar: blue < 1 compression, red > 1 expansion, values <= 0 are folds),
  and a regular grid deformed by the displacement.

Every panel is on the fixed grid. The moving image, which lives on its own
grid, is resampled onto it through ``moving_transform``: pass the affine of the
registration to show the moving image after pre-alignment (so the warped column
shows what the deformable stage added), or leave it None to show it where it is
in physical space (identity). Planes are named from the image direction
(the voxel axis closest to L-R gives sagittal slices, P-A coronal, I-S axial)
and shown with the voxel spacing as aspect ratio; I-S points up in coronal and
sagittal panels.

The figure is drawn with matplotlib's Agg canvas (no display, no pyplot state)
and written atomically (:func:`itk_odereg.io_utils.atomic_write`).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .core.grid import ImageGrid
from .core.image import load_image, tensor_to_sitk
from .core.typing import PathLike
from .io_utils import atomic_write
from .transforms import displacement_field_from_image, physical_displacement_to_voxel

__all__ = ["qc_figure", "registration_qc_figure", "slice_planes"]

_PLANE_OF_PHYSICAL_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}
_PLANE_ORDER = ("axial", "coronal", "sagittal")


def slice_planes(grid: ImageGrid) -> list[tuple[str, int]]:
    """The planes shown for ``grid``: (name, tensor axis held fixed), ordered axial, coronal, sagittal.

    The tensor axis ``a`` (z, y, x order) is ITK axis ``d - 1 - a``; its direction
    column's largest component names the physical axis it runs along (x: L-R,
    y: P-A, z: I-S), and a slice perpendicular to the L-R axis is sagittal, etc.
    If two voxel axes run along the same physical axis (strongly oblique), the
    planes are named ``"slice k"`` by tensor axis instead.

    Args:
        grid: a 2D or 3D grid.

    Returns:
        ``[("2D", -1)]`` for 2D grids; else three (name, tensor axis) pairs.
    """
    if grid.ndim == 2:
        return [("2D", -1)]
    physical = [int(np.argmax(np.abs(grid.direction[:, grid.ndim - 1 - a]))) for a in range(3)]
    if len(set(physical)) != 3:
        return [(f"slice {'zyx'[a]}", a) for a in range(3)]
    planes = {_PLANE_OF_PHYSICAL_AXIS[p]: a for a, p in enumerate(physical)}
    return [(name, planes[name]) for name in _PLANE_ORDER]


def _scalar_on_grid(image: Any, name: str, grid: Optional[ImageGrid]) -> tuple[np.ndarray, ImageGrid]:
    caller = "qc_figure()"
    if isinstance(image, np.ndarray):
        if grid is None or image.shape != grid.shape:
            expected = None if grid is None else grid.shape
            raise ValueError(f"{caller}: '{name}' array must have the fixed grid's shape {expected}, got {image.shape}")
        return image.astype(np.float64), grid
    loaded = load_image(image, name, caller, dtype=torch.float64)
    array = loaded.tensor[0, 0].numpy()
    if grid is not None and not loaded.grid.allclose(grid, atol=1e-4):
        import SimpleITK as sitk

        image_s = tensor_to_sitk(array, loaded.grid)
        array = sitk.GetArrayFromImage(sitk.Resample(image_s, grid.to_sitk_reference(sitk.sitkFloat64),
                                                     sitk.Transform(grid.ndim, sitk.sitkIdentity),
                                                     sitk.sitkLinear, 0.0, sitk.sitkFloat64))
        return array, grid
    return array, loaded.grid


def _moving_on_fixed(moving: Any, grid: ImageGrid, transform: Any) -> np.ndarray:
    import SimpleITK as sitk

    loaded = load_image(moving, "moving", "qc_figure()", dtype=torch.float64)
    moving_s = tensor_to_sitk(loaded.tensor, loaded.grid)
    if transform is None:
        tx = sitk.Transform(grid.ndim, sitk.sitkIdentity)
    elif isinstance(transform, sitk.Transform):
        tx = transform
    elif isinstance(transform, (tuple, list)) and len(transform) == 2:
        from .transforms import affine_matrix_to_sitk

        tx = affine_matrix_to_sitk(*transform)
    else:
        raise TypeError("qc_figure(): 'moving_transform' must be a SimpleITK transform, an (A, t) pair or None, "
                        f"got {type(transform).__name__}")
    out = sitk.Resample(moving_s, grid.to_sitk_reference(sitk.sitkFloat64), tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(out)


def _field_voxels(field: Any, grid: ImageGrid) -> np.ndarray:
    if isinstance(field, np.ndarray):
        physical = field
    else:
        physical, field_grid = displacement_field_from_image(field)
        if not field_grid.allclose(grid, atol=1e-4):
            raise ValueError("qc_figure(): 'displacement_field' must be on the fixed grid")
    return physical_displacement_to_voxel(physical, grid)


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(array, index, axis=axis) if axis >= 0 else array


def _window(array: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(array, [1.0, 99.5])
    if hi <= lo:
        lo, hi = float(array.min()), float(array.max()) + 1e-6
    return float(lo), float(hi)


def qc_figure(
    fixed: Any,
    moving: Any,
    warped: Any,
    jacobian_determinant: Any,
    displacement_field: Any,
    path: PathLike,
    *,
    moving_transform: Any = None,
    title: Optional[str] = None,
    grid_spacing_voxels: Optional[int] = None,
    dpi: int = 110,
    inputs: Sequence[Any] = (),
) -> str:
    """Write a registration QC figure (PNG) like NODEO's Figure 1.

    Args:
        fixed: the fixed image (``SimpleITK.Image``, ``itk.Image`` or path; 2D/3D scalar).
        moving: the moving image on its own grid (resampled onto the fixed grid, see ``moving_transform``).
        warped: the registered moving image on the fixed grid (e.g. ``RegistrationResult.warped``).
        jacobian_determinant: det J on the fixed grid (image, or array in tensor order (z, y, x)).
        displacement_field: displacement on the fixed grid, physical mm, components (x, y[, z]):
            a SimpleITK/ITK vector image or an array (*shape, d). Pass the deformable part
            (``displacement_field_image(result.deformable_field_mm, result.fixed_grid)``) so the
            affine does not dominate the grid panel; points are drawn at ``p + u(p)`` in voxel units.
        path: output PNG path (its directory must exist).
        moving_transform: transform (fixed -> moving points) used to bring ``moving`` onto the
            fixed grid for its panel: a SimpleITK transform, an (A, t) pair, or None (identity).
        title: optional figure title (default: det J range and folding %).
        grid_spacing_voxels: spacing of the drawn grid lines in voxels (default: about 24 lines).
        dpi: resolution of the PNG.
        inputs: extra paths that must not be overwritten (the image paths given here are always protected).

    Returns:
        ``path`` as a str.

    Raises:
        ValueError / TypeError: unreadable or mismatched images, or ``path`` is one of the inputs.
    """
    protected = list(inputs) + [fixed, moving, warped, jacobian_determinant, displacement_field]
    fixed_a, grid = _scalar_on_grid(fixed, "fixed", None)
    warped_a, _ = _scalar_on_grid(warped, "warped", grid)
    jac_a, _ = _scalar_on_grid(jacobian_determinant, "jacobian_determinant", grid)
    moving_a = _moving_on_fixed(moving, grid, moving_transform)
    u_vox = _field_voxels(displacement_field, grid)

    return _draw_figure(fixed_a, moving_a, warped_a, jac_a, u_vox, grid, os.fspath(path),
                        moving_pre_aligned=moving_transform is not None, title=title,
                        grid_spacing_voxels=grid_spacing_voxels, dpi=dpi, protected=protected)


def registration_qc_figure(
    registration: Any,
    fixed: Any,
    moving: Any,
    warped: torch.Tensor,
    path: PathLike,
    *,
    inputs: Sequence[Any] = (),
    title: Optional[str] = None,
    dpi: int = 110,
) -> str:
    """The figure of :func:`qc_figure`, straight from the engine's answer (no image conversions).

    Args:
        registration: a :class:`~itk_odereg.registration.result.Registration`.
        fixed, moving: the images as loaded (:class:`~itk_odereg.core.image.LoadedImage`).
        warped: ``registration.warp(moving.tensor, moving.grid)``.
        path: output PNG path (its directory must exist).
        inputs: paths that must not be overwritten.

    Returns:
        ``path`` as a str.
    """
    from .core.sampling import sample_at_points

    grid = registration.fixed_grid
    A = torch.tensor(np.array(registration.affine_matrix))
    t = torch.tensor(np.array(registration.affine_translation))
    points = torch.as_tensor(grid.world_points().reshape(-1, grid.ndim))
    pre_aligned = sample_at_points(moving.tensor.double(), moving.grid, points @ A.T + t, grid.shape)
    return _draw_figure(
        fixed.tensor[0, 0].double().numpy(), pre_aligned[0, 0].cpu().numpy(), warped[0, 0].double().cpu().numpy(),
        registration.jacobian_determinant, registration.displacement[0].double().cpu().numpy(), grid,
        os.fspath(path), moving_pre_aligned=True, title=title, grid_spacing_voxels=None, dpi=dpi,
        protected=list(inputs))


def _draw_figure(fixed_a, moving_a, warped_a, jac_a, u_vox, grid: ImageGrid, dest: str, *, moving_pre_aligned: bool,
                 title, grid_spacing_voxels, dpi, protected) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    planes = slice_planes(grid)
    ncols = 5
    spacing_t = grid.spacing[::-1]  # tensor order
    step = grid_spacing_voxels or max(1, int(round(max(grid.shape) / 24)))
    jmin, jmax = float(jac_a.min()), float(jac_a.max())
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(jmin, 0.5), vmax=max(jmax, 1.5))

    fig = Figure(figsize=(3.0 * ncols, 2.9 * len(planes) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(planes), ncols, squeeze=False)
    columns = ["fixed", "moving" + (" (pre-aligned)" if moving_pre_aligned else ""), "warped",
               "det J (centred at 1)", "deformed grid"]
    windows = [_window(fixed_a), _window(moving_a), _window(warped_a)]
    for row, (plane, axis) in enumerate(planes):
        index = grid.shape[axis] // 2 if axis >= 0 else 0
        in_plane = [a for a in range(grid.ndim) if a != axis]  # tensor axes: rows, columns
        aspect = float(spacing_t[in_plane[0]] / spacing_t[in_plane[1]])
        # I-S up: the row axis of coronal/sagittal slices is z; axial rows run top-down.
        origin = "upper" if plane in ("axial", "2D") else "lower"
        for col, (array, (lo, hi)) in enumerate(zip((fixed_a, moving_a, warped_a), windows)):
            axes[row, col].imshow(_take(array, axis, index), cmap="gray", vmin=lo, vmax=hi, aspect=aspect,
                                  origin=origin, interpolation="nearest")
        im = axes[row, 3].imshow(_take(jac_a, axis, index), cmap="RdBu_r", norm=norm, aspect=aspect,
                                 origin=origin, interpolation="nearest")
        fig.colorbar(im, ax=axes[row, 3], fraction=0.046, pad=0.04)
        ax = axes[row, 4]
        ax.imshow(_take(warped_a, axis, index), cmap="gray", vmin=windows[2][0], vmax=windows[2][1], aspect=aspect,
                  origin=origin, interpolation="nearest", alpha=0.35)
        u_rows = _take(u_vox[in_plane[0]], axis, index)
        u_cols = _take(u_vox[in_plane[1]], axis, index)
        n_rows, n_cols = u_rows.shape
        r, c = np.meshgrid(np.arange(n_rows, dtype=float), np.arange(n_cols, dtype=float), indexing="ij")
        rr, cc = r + u_rows, c + u_cols
        for i in range(0, n_rows, step):
            ax.plot(cc[i, :], rr[i, :], color="tab:orange", linewidth=0.7)
        for j in range(0, n_cols, step):
            ax.plot(cc[:, j], rr[:, j], color="tab:orange", linewidth=0.7)
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_ylim((n_rows - 0.5, -0.5) if origin == "upper" else (-0.5, n_rows - 0.5))
        ax.set_aspect(aspect)
        for col in range(ncols):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(columns[col], fontsize=10)
        label = plane if axis < 0 else f"{plane}\n({'zyx'[axis]} = {index})"
        axes[row, 0].set_ylabel(label, fontsize=10)
    folding = float((jac_a <= 0).mean() * 100.0)
    fig.suptitle(title or f"det J in [{jmin:.3f}, {jmax:.3f}], folding {folding:.3f}% of voxels", fontsize=11)
    fig.tight_layout()

    atomic_write(dest, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), inputs=protected, caller="qc_figure()")
    return dest
