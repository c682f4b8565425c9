"""The engine's answer: one frozen, toolkit-neutral value that every front end converts.

:class:`Registration` holds what a registration found and nothing of the toolkit the
images came from: the fixed and moving grids, the affine, the deformable displacement and
its inverse, the loss history and the timings. It can warp an image, inverse-warp one,
give the dense field of the whole map in millimetres and the Jacobian determinant. The
SimpleITK, ITK and ANTs adapters (:mod:`itk_odereg.adapters`) turn it into their images,
transforms and files; nothing else builds outputs.

Conventions (``docs/methods.md`` section 3):

* The forward map sends a fixed point ``p`` (LPS mm) to the moving point
  ``T(p) = A (p + W(p)) + t``: the deformable part ``W`` acts first, then the affine
  (ITK's composite ``[affine, warp]``, ANTs' ``fwdtransforms = [warp, affine]``).
* ``displacement`` and ``inverse_displacement`` are tensors ``[1, d, *fixed_grid.shape]``
  in voxels of the fixed grid, channel ``i`` along tensor axis ``i`` ((z, y, x) in 3D), as
  the ops take them. The ``*_mm`` views are float64 arrays ``(*fixed_grid.shape, d)`` in LPS
  mm with components (x, y, z), which is what the toolkits store.
* The inverse displacement lives on the fixed grid as well (ANTs' convention): a moving
  point ``q`` goes to ``r = A^-1 (q - t)`` and then to ``r + W^-1(r)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from .. import ops
from ..core.grid import ImageGrid
from ..core.sampling import sample_at_points
from ..transforms import voxel_displacement_to_physical

__all__ = ["Registration"]


@dataclass(frozen=True, eq=False)
class Registration:
    """A registration of a moving image to a fixed image, independent of any toolkit.

    Attributes:
        fixed_grid: the grid every output lives on.
        moving_grid: the moving image's grid (where :meth:`inverse_warp` puts its result).
        affine_matrix, affine_translation: ``T_affine(p) = A p + t``, LPS mm (read-only arrays).
        displacement: deformable part ``W(p) - p``, ``Tensor[1, d, *fixed_grid.shape]``, voxels of
            the fixed grid, tensor axis order.
        inverse_displacement: its inverse, same layout, also on the fixed grid.
        loss_history: per-iteration records of every stage (each has a ``"stage"`` key).
        timings: wall seconds per stage (``load``, ``affine``, ``nodeo``/``msodenet``, ``outputs``, ``total``).
        seed: the random seed the stages ran with (a fresh one when none was given), to repeat the run.
    """

    fixed_grid: ImageGrid
    moving_grid: ImageGrid
    affine_matrix: np.ndarray
    affine_translation: np.ndarray
    displacement: torch.Tensor = field(repr=False)
    inverse_displacement: torch.Tensor = field(repr=False)
    loss_history: tuple = field(default=(), repr=False)
    timings: Mapping[str, float] = field(default_factory=dict)
    seed: Optional[int] = None

    #: target voxels resampled at a time by :meth:`inverse_warp` (bounds its temporary memory)
    CHUNK_POINTS = 1 << 16

    def __post_init__(self) -> None:
        for name in ("affine_matrix", "affine_translation"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        expected = (1, self.fixed_grid.ndim, *self.fixed_grid.shape)
        for name in ("displacement", "inverse_displacement"):
            if tuple(getattr(self, name).shape) != expected:
                raise ValueError(f"Registration: '{name}' must have shape {expected} (the fixed grid), "
                                 f"got {tuple(getattr(self, name).shape)}")

    # ------------------------------------------------------------------ fields

    @property
    def ndim(self) -> int:
        return self.fixed_grid.ndim

    @property
    def affine_determinant(self) -> float:
        return float(np.linalg.det(self.affine_matrix))

    @cached_property
    def displacement_mm(self) -> np.ndarray:
        """The deformable part ``W(p) - p``: float64 ``(*fixed_grid.shape, d)``, LPS mm, components (x, y, z)."""
        return voxel_displacement_to_physical(self.displacement[0].double().cpu(), self.fixed_grid)

    @cached_property
    def inverse_displacement_mm(self) -> np.ndarray:
        """The inverse of the deformable part, same layout as :attr:`displacement_mm`."""
        return voxel_displacement_to_physical(self.inverse_displacement[0].double().cpu(), self.fixed_grid)

    def field_mm(self, points: Optional[np.ndarray] = None) -> np.ndarray:
        """``T(p) - p`` of the whole map (affine included) at every fixed voxel, float64 ``(*shape, d)``, LPS mm.

        ``points``: the fixed grid's world points, when the caller already holds them.
        """
        points = self.fixed_grid.world_points() if points is None else points
        return self._field_at(points, self.displacement_mm)

    def _field_at(self, points: np.ndarray, displacement_mm: np.ndarray) -> np.ndarray:
        """``T(p) - p = A (p + u(p)) + t - p`` at fixed points ``p`` (..., d) where the deformable part is ``u``."""
        A, t = self.affine_matrix, self.affine_translation
        # Built in place: on a whole grid these (voxels x d) float64 arrays are the largest of
        # the output stage, and every temporary of them raised the peak memory.
        total = points @ (A - np.eye(self.ndim)).T
        total += t
        total += displacement_mm @ A.T
        return total

    @cached_property
    def jacobian_determinant(self) -> np.ndarray:
        """``det(I + DW)`` of the deformable part on the fixed grid, float64 ``fixed_grid.shape``.

        The affine's determinant is the constant :attr:`affine_determinant`.
        """
        return ops.jacobian_determinant(self.displacement.double())[0].cpu().numpy()

    @property
    def folding_percent(self) -> float:
        """Percentage of fixed voxels where the deformable part folds (``det J <= 0``)."""
        return float((self.jacobian_determinant <= 0).mean() * 100.0)

    # ------------------------------------------------------------------ resampling

    def warp(self, image: torch.Tensor, grid: ImageGrid, *, field_mm: Optional[np.ndarray] = None) -> torch.Tensor:
        """Resample ``image`` ``[1, C, *grid.shape]`` (the moving image, on ``grid``) onto the fixed grid at ``T(p)``.

        Linear, 0 outside (as ``sitk.Resample(moving, fixed, transform)``). ``field_mm``: the
        :meth:`field_mm` array when the caller already computed it. Returns
        ``[1, C, *fixed_grid.shape]`` in ``image``'s dtype, on the device of :attr:`displacement`.
        """
        d = self.ndim
        u_mm = self.displacement_mm.reshape(-1, d) if field_mm is None else None
        total_mm = None if field_mm is None else np.asarray(field_mm).reshape(-1, d)

        def mapped(points: np.ndarray, start: int, stop: int) -> torch.Tensor:
            points += self._field_at(points, u_mm[start:stop]) if total_mm is None else total_mm[start:stop]
            return torch.from_numpy(points).to(self.displacement.device)

        return self._resample_in_chunks(image, grid, self.fixed_grid, mapped)

    def _resample_in_chunks(self, image: torch.Tensor, grid: ImageGrid, target: ImageGrid,
                            mapped: Callable[[np.ndarray, int, int], torch.Tensor]) -> torch.Tensor:
        """``image`` (on ``grid``) sampled at ``mapped(points, start, stop)`` for the voxels of ``target``.

        ``mapped`` takes the world points (float64 numpy ``[k, d]``, its own to modify) of the
        target voxels with flat indices ``start:stop`` and returns where to sample them (a float64
        tensor ``[k, d]``, LPS mm). In chunks of :attr:`CHUNK_POINTS` voxels: the float64 point
        arrays of a whole image and their temporaries were the largest transient of the output
        stage (about 9 times the warped image's size). Returns ``[1, C, *target.shape]``.
        """
        image = image.to(self.displacement.device)
        count, channels = target.numel, image.shape[1]
        out = torch.empty((1, channels, count), dtype=image.dtype, device=image.device)
        for start in range(0, count, self.CHUNK_POINTS):
            stop = min(count, start + self.CHUNK_POINTS)
            flat = (1,) * (self.ndim - 1) + (stop - start,)
            points = mapped(target.world_points_at(start, stop), start, stop)
            out[:, :, start:stop] = sample_at_points(image, grid, points, flat).reshape(1, channels, -1)
        return out.view(1, channels, *target.shape)

    def inverse_points(self, points: torch.Tensor) -> torch.Tensor:
        """``T^-1(q)`` for moving-space points ``q`` ``[P, d]`` (float64, LPS mm): fixed-space points ``[P, d]``."""
        device = points.device
        inv_A = torch.tensor(np.linalg.inv(self.affine_matrix).T.copy(), device=device)
        r = (points - torch.tensor(np.array(self.affine_translation), device=device)) @ inv_A
        flat = (1,) * (self.ndim - 1) + (points.shape[0],)
        r += sample_at_points(self._inverse_field_channels, self.fixed_grid, r, flat).reshape(self.ndim, -1).T
        return r

    @cached_property
    def _inverse_field_channels(self) -> torch.Tensor:
        # the inverse field as a [1, d, *shape] float64 image of LPS mm components, for sampling
        return torch.from_numpy(np.moveaxis(self.inverse_displacement_mm, -1, 0)[None].copy()).to(
            self.displacement.device)

    def inverse_warp(self, image: torch.Tensor, grid: Optional[ImageGrid] = None,
                     target: Optional[ImageGrid] = None) -> torch.Tensor:
        """Resample ``image`` (the fixed image, on ``grid``, default the fixed grid) onto ``target`` at ``T^-1(q)``.

        ``target`` defaults to the moving grid, which gives ANTs' ``InverseWarped`` image.
        Linear, 0 outside, with ITK's conventions (:func:`sample_at_points`): the inverse
        field gives no displacement outside the fixed grid, as an ITK
        ``DisplacementFieldTransform`` does. Returns ``[1, C, *target.shape]``.
        """
        grid = self.fixed_grid if grid is None else grid
        target = self.moving_grid if target is None else target
        device = self.displacement.device
        return self._resample_in_chunks(image, grid, target,
                                        lambda points, start, stop: self.inverse_points(torch.from_numpy(points).to(device)))
