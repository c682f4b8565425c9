"""The global rotation search that starts the rigid model (TorchScript)."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ._geometry import _centred_points, _grid, level_shape, resize, rotation_angles, rotation_matrices
from ..core.differences import image_gradient
from ..core.moments import weighted_centroid
from ..core.sampling import sample_normalized


def search_rotations(step_deg: float = 22.5) -> torch.Tensor:
    """[K, 3] angles (radians) covering all rotations, ``step_deg`` apart per angle: a and c
    over the full turn, b over (-90, 90) degrees at half steps off the poles."""
    full = torch.arange(-180.0, 180.0, step_deg, dtype=torch.float64)
    half = torch.arange(-90.0 + step_deg / 2, 90.0, step_deg, dtype=torch.float64)
    grid = torch.meshgrid(full, half, full, indexing="ij")
    return torch.deg2rad(torch.stack([g.reshape(-1) for g in grid], 1)).float()


def _foreground(image: torch.Tensor) -> torch.Tensor:
    """[1, 1, *S] head mask: above a tenth of the image maximum (intensities are normalized)."""
    return (image > 0.1 * image.amax()).to(image.dtype)


def _standardized(values: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit norm along the last axis (so a dot product is a correlation)."""
    centred = values - values.mean(-1, keepdim=True)
    return centred / centred.square().sum(-1, keepdim=True).sqrt().clamp_min(1e-6)


def _head_cues(image: torch.Tensor, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """([2, N] head mask and gradient magnitude (voxel units, the MS-ODENet features' differences:
    ``"replicate_half"``), [3] centroid of the mask in ``points``' units, 0 for an empty mask)."""
    mask = _foreground(image)
    centroid = weighted_centroid(points, mask.reshape(-1), 1.0, "rows")
    gradient = image_gradient(image, None, "replicate_half")
    cues = torch.cat([mask, gradient.square().sum(1, keepdim=True).sqrt()], 1)
    return cues, centroid


def _rotation_scores(fixed: torch.Tensor, moving: torch.Tensor, rotations: torch.Tensor,
                     reference_shape: List[int], chunk: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scores [K], translations [K, 3]) of rotations [K, 3, 3] (see :func:`global_rigid_search`)."""
    shape = [int(s) for s in fixed.shape[2:]]
    points = _centred_points(shape, reference_shape, fixed)
    fixed_cues, fixed_centre = _head_cues(fixed, points)
    moving_cues, moving_centre = _head_cues(moving, points)
    target = _standardized(fixed_cues.reshape(2, -1))
    shifts = moving_centre[None] - rotations @ fixed_centre
    # Reference voxels about the centre -> grid_sample's corner-aligned [-1, 1].
    to_unit = torch.tensor([2.0 / max(r - 1, 1) for r in reference_shape], dtype=fixed.dtype, device=fixed.device)
    scores: List[torch.Tensor] = []
    for start in range(0, int(rotations.shape[0]), chunk):
        r = rotations[start:start + chunk]
        k = int(r.shape[0])
        moved = (r @ points + shifts[start:start + chunk, :, None]) * to_unit.view(1, 3, 1)
        # grid_sample wants (x, y, z) = tensor axes (2, 1, 0), last.
        grid = moved.flip(1).transpose(1, 2).reshape(k, shape[0], shape[1], shape[2], 3)
        sampled = sample_normalized(moving_cues.expand(k, 2, shape[0], shape[1], shape[2]), grid, "zeros")
        scores.append((_standardized(sampled.reshape(k, 2, -1)) * target[None]).sum(-1).sum(1))
    return torch.cat(scores), shifts


def global_rigid_search(fixed: torch.Tensor, moving: torch.Tensor, reference_shape: List[int],
                        step_deg: float = 22.5, keep: int = 4, margin: float = 0.05) -> torch.Tensor:
    """[1, 6] rigid parameters (:func:`rigid_displacement`) of the best rotation over all orientations.

    Every candidate rotation R comes with the translation that maps the fixed
    head's centroid onto the moving head's. The best maximizes the correlation
    of the head masks plus that of the gradient magnitudes, between the fixed
    image and the moving image so moved: both cues ignore the contrast (T1
    against T2). The candidates are :func:`search_rotations` (``step_deg``
    apart), scored on a grid of half the resolution; then around each of the
    ``keep`` best and the identity, 27 rotations half a step apart are scored
    at full resolution. A far orientation must beat the best near the identity
    by ``margin`` (the score is the sum of two correlations, at most 2).
    No local optimizer started at the identity reaches a head turned by 75
    degrees: this search gives the rigid ODE its starting point.

    ``fixed`` and ``moving`` [1, 1, *S] share a coarse grid, corner-aligned with
    ``reference_shape``, whose voxels the translation is in.
    """
    shape = [int(s) for s in fixed.shape[2:]]
    coarse_fixed, coarse_moving, coarse_shape = fixed, moving, shape
    if min(shape) >= 16:
        coarse_shape = level_shape(shape, 2)
        coarse_fixed = resize(F.avg_pool3d(fixed, 2), coarse_shape)
        coarse_moving = resize(F.avg_pool3d(moving, 2), coarse_shape)
    candidates = rotation_matrices(search_rotations(step_deg).to(fixed.dtype).to(fixed.device))
    scores, _ = _rotation_scores(coarse_fixed, coarse_moving, candidates, reference_shape)
    # The identity competes too, and wins unless a far orientation is clearly better: an object with a
    # symmetry (an ellipsoid) looks the same turned by 180 degrees, and must not be turned.
    identity = torch.eye(3, dtype=fixed.dtype, device=fixed.device)[None]
    best = torch.cat([identity, candidates[torch.topk(scores, min(keep, int(scores.shape[0]))).indices]])
    h = math.radians(step_deg / 2)
    offsets = torch.tensor([-h, 0.0, h], dtype=fixed.dtype, device=fixed.device)
    local = rotation_matrices(_grid([offsets, offsets, offsets]).reshape(3, -1).t())
    refined = (best[:, None] @ local[None]).reshape(-1, 3, 3)
    scores, shifts = _rotation_scores(fixed, moving, refined, reference_shape)
    count = int(local.shape[0])
    near_score, near_index = scores[:count].max(0)
    far_score, far_index = scores[count:].max(0)
    # Tensor indexing, not int() and if: torch.export traces it without a data-dependent branch.
    index = torch.where(far_score > near_score + margin, far_index + count, near_index).view(1)
    return torch.cat([rotation_angles(refined.index_select(0, index)[0]), shifts.index_select(0, index)[0]])[None]
