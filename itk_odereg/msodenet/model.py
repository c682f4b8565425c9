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

__all__ = ["MSODENet", "CascadeODENet", "DenseVelocity", "rigid_displacement", "PARAMETERIZATIONS", "SOLVERS"]

PARAMETERIZATIONS = ("rigid", "bspline", "dense")
SOLVERS = ("euler", "adaptive_heun")
LEVEL_FACTORS = (4, 2, 1)
# Per level, coarse to fine.
DEFAULT_FORCE_GAIN = {"bspline": (0.0, 3.0, 8.0), "rigid": (12.0, 12.0, 12.0), "dense": (0.0, 3.0, 8.0)}
# Euler steps per level. Dense takes B-spline's, not the paper's (5, 5, 2): its force gains were chosen
# with them, and on synthetic checks 2 fine steps left more residual (MSE 0.17 of the initial against 0.075).
# Rigid: 8 per level, where its force gain converges without overshooting.
DEFAULT_STEPS = {"bspline": (5, 5, 4), "rigid": (8, 8, 8), "dense": (5, 5, 4)}


def level_shape(shape: List[int], factor: int) -> List[int]:
    """Corner-aligned pyramid level: (S - 1) / factor + 1 samples per axis (at least 2)."""
    return [max(2, (s - 1) // factor + 1) for s in shape]


def resize(field: torch.Tensor, shape: List[int]) -> torch.Tensor:
    """Trilinear resampling of [1, C, *S] onto a corner-aligned grid of another size."""
    if list(field.shape[2:]) == shape:
        return field
    return F.interpolate(field, size=shape, mode="trilinear", align_corners=True)


def rescale_displacement(u: torch.Tensor, from_shape: List[int], to_shape: List[int]) -> torch.Tensor:
    """A voxel-unit displacement of one corner-aligned grid, resampled and rescaled onto another."""
    scale = torch.tensor([(t - 1) / max(f - 1, 1) for f, t in zip(from_shape, to_shape)], dtype=u.dtype,
                         device=u.device).view(1, 3, 1, 1, 1)
    return resize(u, to_shape) * scale


def _grid(axes: List[torch.Tensor]) -> torch.Tensor:
    """[3, *S] point grid of three 1D coordinate tensors (tensor axis order, "ij" indexing)."""
    grid = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    return torch.stack([grid[0], grid[1], grid[2]])


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """[K, 3, 3] rotations R0(a) R1(b) R2(c) for ``angles`` [K, 3] = (a, b, c), radians: the
    product of rotations about tensor axes 0, 1 and 2."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(angles[:, 0]), torch.zeros_like(angles[:, 0])
    r0 = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    r1 = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    r2 = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return r0 @ r1 @ r2


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """[3, 3] rotation, the product of rotations about tensor axes 0, 1 and 2 by ``angles`` (radians)."""
    return rotation_matrices(angles[None])[0]


def rotation_angles(matrix: torch.Tensor) -> torch.Tensor:
    """The angles [3] (radians, the middle one in [-pi/2, pi/2]) of :func:`rotation_matrix`."""
    b = torch.asin(matrix[0, 2].clamp(-1.0, 1.0))
    c = torch.atan2(-matrix[0, 1], matrix[0, 0])
    a = torch.atan2(-matrix[1, 2], matrix[2, 2])
    return torch.stack([a, b, c])


def rigid_parameter_rate(params: torch.Tensor, body_rate: torch.Tensor) -> torch.Tensor:
    """d(params)/dt [1, 6] of the motion p -> R p + t for a rate given in the warped image's frame.

    ``body_rate`` [1, 6] = (omega, v) asks that the image warped by the current
    motion be sampled at p + omega x p + v (omega in radians, v in finest-grid
    voxels, p about the grid centre), i.e. dR/dt = R [omega]x and dt/dt = R v.
    The rotation is applied in that frame because the forces and the networks
    see the warped image: adding omega to the angles directly is right only
    near the identity, and at 75 degrees it would turn the wrong way.
    """
    angles = params[0, :3]
    zero = torch.zeros_like(angles[0])
    r1 = rotation_matrix(torch.stack([zero, angles[1], zero]))
    r2 = rotation_matrix(torch.stack([zero, zero, angles[2]]))
    # Columns: the body-frame angular velocity of a unit rate of each angle.
    e2 = torch.zeros_like(angles)
    e2[2] = 1.0
    euler = torch.stack([(r2.t() @ r1.t())[:, 0], r2.t()[:, 1], e2], 1)
    # Damped least squares: near gimbal lock (b = +-90 degrees) the angle rates are undetermined.
    normal = euler.t() @ euler + 1e-6 * torch.eye(3, dtype=params.dtype, device=params.device)
    angle_rate = torch.linalg.solve(normal, euler.t() @ body_rate[0, :3, None])[:, 0]
    shift_rate = rotation_matrix(angles) @ body_rate[0, 3:]
    return torch.cat([angle_rate, shift_rate])[None]


def _centred_points(shape: List[int], reference_shape: List[int], like: torch.Tensor) -> torch.Tensor:
    """[3, N] positions of a grid's voxels in voxels of the corner-aligned ``reference_shape``, about the centre."""
    scale = [(s - 1) / max(r - 1, 1) for s, r in zip(shape, reference_shape)]
    axes = [(torch.arange(s, dtype=like.dtype, device=like.device) - (s - 1) / 2.0) / scale[i]
            for i, s in enumerate(shape)]
    return _grid(axes).reshape(3, -1)


def rigid_displacement(params: torch.Tensor, shape: List[int], reference_shape: List[int]) -> torch.Tensor:
    """Displacement [1, 3, *shape] (voxel units of ``shape``) of a rigid motion about the grid centre.

    Args:
        params: [1, 6]: three rotation angles (radians, about tensor axes 0, 1, 2)
            and a translation in voxels of ``reference_shape`` (the finest grid).
        shape: the grid to evaluate on (corner-aligned with ``reference_shape``).
        reference_shape: the grid whose voxels the translation is expressed in.
    """
    scale = [(s - 1) / max(r - 1, 1) for s, r in zip(shape, reference_shape)]
    # Positions in reference voxels, centred, so the motion is the same on every level.
    points = _centred_points(shape, reference_shape, params)
    moved = rotation_matrix(params[0, :3]) @ points + params[0, 3:].view(3, 1)
    scale_t = torch.tensor(scale, dtype=params.dtype, device=params.device).view(3, 1)
    return ((moved - points) * scale_t).reshape(1, 3, shape[0], shape[1], shape[2])


def _conv(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


def _central_gradient(image: torch.Tensor) -> torch.Tensor:
    """[1, 3, *S] central differences (voxel units) of [1, 1, *S]; at the faces, with the edge
    replicated, half the one-sided difference (unlike losses._spatial_gradient, which uses the
    full one: the shipped weights were trained on this one)."""
    padded = F.pad(image, (1, 1, 1, 1, 1, 1), mode="replicate")
    d0 = padded[:, :, 2:, 1:-1, 1:-1] - padded[:, :, :-2, 1:-1, 1:-1]
    d1 = padded[:, :, 1:-1, 2:, 1:-1] - padded[:, :, 1:-1, :-2, 1:-1]
    d2 = padded[:, :, 1:-1, 1:-1, 2:] - padded[:, :, 1:-1, 1:-1, :-2]
    return 0.5 * torch.cat([d0, d1, d2], 1)


FEATURE_CHANNELS = 18
EDGES = 13        # the |n_w|^2 channel
MIND_FORCE = 15   # first of the three channels of the MIND demons force


def _shifted(image: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """image(x + offset e_axis) for offset +-1 (tensor axis 0, 1, 2), replicated at the faces."""
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis) + (1 if offset > 0 else 0)] = 1
    padded = F.pad(image, pad, mode="replicate")
    start = 1 if offset > 0 else 0
    return padded.narrow(2 + axis, start, image.shape[2 + axis])


def mind_descriptor(image: torch.Tensor) -> torch.Tensor:
    """[1, 6, *S] MIND self-similarity (Heinrich et al., MedIA 2012) over the six face neighbours:
    exp(-D_r / V) with D_r the 3x3x3 box mean of (I(x) - I(x + r))^2 and V its mean over r,
    scaled so each voxel's largest entry is 1. It describes where edges are and how
    they run, not their contrast: two modalities of one anatomy get similar descriptors."""
    distances: List[torch.Tensor] = []
    for axis in range(3):
        for offset in (1, -1):
            difference = (image - _shifted(image, axis, offset)).square()
            distances.append(F.avg_pool3d(difference, 3, 1, 1, count_include_pad=False))
    d = torch.cat(distances, 1)
    variance = d.mean(1, keepdim=True).clamp_min(1e-4)
    descriptor = torch.exp(-d / variance)
    return descriptor / descriptor.amax(1, keepdim=True)


def _normalized_gradient(image: torch.Tensor, edge_epsilon: float = 0.05) -> torch.Tensor:
    """grad I / sqrt(|grad I|^2 + eps^2): ``edge_epsilon`` is the gradient magnitude (intensity
    per voxel, images in [0, 1]) below which an edge fades out. (A default argument, not a
    module constant: TorchScript cannot read module-level floats.)"""
    g = _central_gradient(image)
    return g / torch.sqrt(g.square().sum(1, keepdim=True) + edge_epsilon**2)


def fixed_image_cues(fixed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed image's part of :func:`registration_features`: (n_f [1, 3, *S], MIND
    descriptor [1, 6, *S]). The fixed image does not change during a level, so these
    are computed once per level rather than at every step."""
    return _normalized_gradient(fixed), mind_descriptor(fixed)


def registration_features(warped: torch.Tensor, fixed: torch.Tensor, fixed_cues: Tuple[torch.Tensor, torch.Tensor],
                          t: float) -> torch.Tensor:
    """The network inputs at one ODE step, [1, FEATURE_CHANNELS, *S]; ``fixed_cues`` is
    :func:`fixed_image_cues` of ``fixed``.

    Besides the two images and t (the paper's inputs), the cues a classical
    optimizer's gradient is built from, so that the convolutions need not
    learn products of their inputs:

    * n_w, n_f: the normalized gradient fields of warped and fixed (contrast
      independent up to sign) and their alignment n_w . n_f (what NGF measures);
    * (f - w) n_w: the optical-flow (demons) force, right for same-contrast pairs;
    * |n_w|^2: where warped has edges;
    * the MIND residual mean_r |M_f - M_w| and the MIND demons step
      sum_r (M_f,r - M_w,r) grad M_w,r / (sum_r |grad M_w,r|^2 + (M_f,r - M_w,r)^2)
      (:func:`mind_descriptor`): a modality-independent mismatch and the
      displacement (voxels) that reduces it.

    Channel order: w, f, t/3, n_w (3), n_f (3), n_w . n_f, (f - w) n_w (3),
    |n_w|^2, MIND residual, MIND force (3); vectors in tensor axis order, per
    voxel of this grid (normalized gradients: :func:`_normalized_gradient`).
    """
    n_f, m_f = fixed_cues
    n_w = _normalized_gradient(warped)
    alignment = (n_w * n_f).sum(1, keepdim=True)
    # |n_w|^2, not |n_w|: the square root's derivative is infinite on flat (all-zero) regions.
    edges = n_w.square().sum(1, keepdim=True)
    m_w = mind_descriptor(warped)
    residual = m_f - m_w
    force = torch.zeros_like(n_w)
    curvature = residual.square().sum(1, keepdim=True) + 1e-3
    for r in range(6):
        g_r = _central_gradient(m_w[:, r:r + 1])
        force = force + residual[:, r:r + 1] * g_r
        curvature = curvature + g_r.square().sum(1, keepdim=True)
    # Normalized as in demons (Gauss-Newton with the residual as damping): a step in voxels, at most ~1/2.
    force = force / curvature
    return torch.cat([warped, fixed, torch.full_like(fixed, t / 3.0), n_w, n_f, alignment, (fixed - warped) * n_w,
                      edges, residual.abs().mean(1, keepdim=True), force], 1)


def anchored_features(warped: torch.Tensor, fixed: torch.Tensor, fixed_cues: Tuple[torch.Tensor, torch.Tensor],
                      t: float) -> torch.Tensor:
    """[2, C, *S]: :func:`registration_features` of (warped, fixed) and of the aligned pair
    (fixed, fixed) at the same t, batched. A network evaluated on both returns its rate
    minus its rate at alignment, so aligned images are a fixed point of the ODE (an image
    registered to itself does not move), whatever the weights: trained networks
    otherwise learn a response to edges alone, up to a voxel or more."""
    return torch.cat([registration_features(warped, fixed, fixed_cues, t), aligned_features(fixed, fixed_cues, t)], 0)


def aligned_features(fixed: torch.Tensor, fixed_cues: Tuple[torch.Tensor, torch.Tensor], t: float) -> torch.Tensor:
    """:func:`registration_features` of (fixed, fixed), from the fixed image's cues alone: at
    alignment the residual, the MIND residual and both forces vanish, and n_w = n_f."""
    n_f, _ = fixed_cues
    edges = n_f.square().sum(1, keepdim=True)
    zero = torch.zeros_like(fixed)
    return torch.cat([fixed, fixed, torch.full_like(fixed, t / 3.0), n_f, n_f, edges, zero, zero, zero, edges,
                      zero, zero, zero, zero], 1)


def _coordinates(like: torch.Tensor) -> torch.Tensor:
    """[1, 3, *S] voxel positions scaled to [-1, 1] per axis (tensor order)."""
    axes = [torch.linspace(-1.0, 1.0, s, dtype=like.dtype, device=like.device) for s in like.shape[2:]]
    return _grid(axes)[None]


def rigid_force_fit(force: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[1, 6] least-squares rigid motion (small angles in radians about tensor axes 0, 1, 2,
    translation in voxels) of a displacement-like field ``force`` [1, 3, *S], weighted by
    ``weight`` [1, 1, *S]: minimizes sum weight * |v + omega x r - force|^2, with r and the
    returned translation about the grid centre (the centre of :func:`rigid_displacement`)."""
    w = weight.reshape(-1)
    total = w.sum().clamp_min(1e-6)
    shape = [int(s) for s in force.shape[2:]]
    r = _centred_points(shape, shape, force).t().contiguous()  # [N, 3]
    # Solved about the weighted centre, where rotation and translation decouple.
    centre = (w[:, None] * r).sum(0) / total
    r = r - centre
    f = force.reshape(3, -1).t()
    v = (w[:, None] * f).sum(0) / total
    torque = (w[:, None] * torch.linalg.cross(r, f - v)).sum(0)
    rr = (w * (r * r).sum(1)).sum()
    inertia = rr * torch.eye(3, dtype=force.dtype, device=force.device) - (w[:, None] * r).t() @ r
    # The damping keeps the system regular where no edge is in view (all weights zero).
    omega = torch.linalg.solve(inertia + (1e-6 * rr + 1e-3) * torch.eye(3, dtype=force.dtype, device=force.device),
                               torque[:, None])[:, 0]
    return torch.cat([omega, v - torch.linalg.cross(omega, centre)])[None]


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
    """([2, N] head mask and gradient magnitude, [3] centroid of the mask in ``points``' units)."""
    mask = _foreground(image)
    weight = mask.reshape(-1)
    centroid = (points * weight).sum(1) / weight.sum().clamp_min(1.0)
    cues = torch.cat([mask, _central_gradient(image).square().sum(1, keepdim=True).sqrt()], 1)
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
        sampled = F.grid_sample(moving_cues.expand(k, 2, shape[0], shape[1], shape[2]), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=True)
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


class RigidVelocity(nn.Module):
    """f_l for rigid parameters: strided convolutions, pooling, two fully connected layers -> 6 rates.

    Input: :func:`anchored_features` (the network's rate at alignment is
    subtracted) and the voxel coordinates, so that
    the pooled features carry moments (where the edges are, not only what
    they look like), which rotations and translations are read from. The
    features are pooled onto a 2x2x2 grid rather than globally, for the same
    reason. Output [1, 6]: d(angles)/dt in radians and d(translation)/dt in
    finest-grid voxels.

    As for :class:`BSplineVelocity`, a learned linear term on the classical
    force comes first: ``force_gain`` times the rigid least-squares fit
    (:func:`rigid_force_fit`, weighted by the edges) of the MIND demons force,
    with a learned gain per parameter, so that an untrained model is a rigid
    demons optimizer.
    """

    def __init__(self, width: int = 16, translation_scale: float = 10.0, factor: int = 1,
                 force_gain: float = 1.0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_conv(FEATURE_CHANNELS + 3, width, 2), _conv(width, 2 * width, 2),
                                     _conv(2 * width, 2 * width, 2))
        self.head = nn.Sequential(nn.Linear(16 * width, 64), nn.LeakyReLU(0.2), nn.Linear(64, 6))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)
        self.register_buffer("output_scale", torch.tensor([0.5, 0.5, 0.5] + [translation_scale] * 3))
        # Attributes, not the module constants: TorchScript cannot read module-level ints.
        self.force_channel = MIND_FORCE
        self.edge_channel = EDGES
        # Fitted angles are level independent; translations are in this level's voxels.
        self.force_gain = nn.Parameter(torch.tensor([force_gain] * 3 + [force_gain * factor] * 3))

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, fixed_cues: Tuple[torch.Tensor, torch.Tensor],
                t: float, theta_shape: List[int]) -> torch.Tensor:
        features = anchored_features(warped, fixed, fixed_cues, t)
        scale = 1.0
        if max(fixed.shape[2:]) > 64:
            # Six parameters need no fine detail: halve large levels (cost, and the fit's sums).
            features = F.avg_pool3d(features, 2)
            scale = 2.0
        k = self.force_channel
        e = self.edge_channel
        # The force vanishes at alignment already: fitted on the registered pair only.
        fitted = rigid_force_fit(features[:1, k:k + 3], features[:1, e:e + 1])
        # Translations fitted on the halved grid are in its voxels.
        fitted = fitted * torch.tensor([1.0, 1.0, 1.0, scale, scale, scale], dtype=fitted.dtype, device=fitted.device)
        x = torch.cat([features, _coordinates(features).expand(2, 3, -1, -1, -1)], 1)
        rates = self.head(F.adaptive_avg_pool3d(self.encoder(x), 2).reshape(2, -1))
        return (rates[:1] - rates[1:]) * self.output_scale + self.force_gain * fitted


def _rate_layers(width: int, force_weight: float) -> Tuple[nn.Conv3d, nn.Conv3d]:
    """(out, shortcut) of a deformable rate: the network's 3x3x3 output layer, zero, and the 1x1
    linear map of the features, ``force_weight`` times the MIND demons force and zero elsewhere,
    so that an untrained rate is the classical force alone."""
    out = nn.Conv3d(width, 3, 3, padding=1)
    shortcut = nn.Conv3d(FEATURE_CHANNELS, 3, 1)
    for layer in (out, shortcut):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    with torch.no_grad():
        for axis in range(3):
            shortcut.weight[axis, MIND_FORCE + axis] = force_weight
    return out, shortcut


class BSplineVelocity(nn.Module):
    """f_l for a cubic B-spline control grid: convolutions down to about the control
    resolution (``downsample`` stride-2 layers), then resampled to the grid's shape.

    Input: :func:`anchored_features` (the rate at alignment is subtracted).
    Output [1, 3, *G]: d(control
    displacement)/dt in finest-grid voxels.

    The rate is a linear map of the (pooled) features plus a convolutional
    network's correction. The linear map starts as ``force_gain`` times the MIND
    demons force (in voxels of this level, ``factor`` finest-grid voxels, per
    unit time), so an untrained model is a multi-scale MIND-demons optimizer
    and training improves on it, as learned optimizers are initialized at a
    classical one; the network starts at zero.
    """

    def __init__(self, downsample: int, width: int = 16, output_scale: float = 4.0, factor: int = 1,
                 force_gain: float = 1.0) -> None:
        super().__init__()
        layers: List[nn.Module] = [_conv(FEATURE_CHANNELS, width, 2 if downsample > 0 else 1)]
        for _ in range(max(downsample - 1, 0)):
            layers.append(_conv(width, width, 2))
        layers.append(_conv(width, width, 1))
        self.encoder = nn.Sequential(*layers)
        self.output_scale = float(output_scale)
        self.out, self.shortcut = _rate_layers(width, force_gain * factor / self.output_scale)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, fixed_cues: Tuple[torch.Tensor, torch.Tensor],
                t: float, theta_shape: List[int]) -> torch.Tensor:
        features = anchored_features(warped, fixed, fixed_cues, t)
        encoded = self.encoder(features)
        pooled = F.adaptive_avg_pool3d(features, [encoded.shape[2], encoded.shape[3], encoded.shape[4]])
        rates = self.out(encoded) + self.shortcut(pooled)
        rates = (rates[:1] - rates[1:]) * self.output_scale
        return F.interpolate(rates, size=theta_shape[2:], mode="trilinear", align_corners=True)


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """[2 radius + 1] sampled Gaussian of standard deviation ``sigma`` (voxels), normalized to sum 1."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class DenseVelocity(nn.Module):
    """f_l for a dense displacement: a three-level UNet (this level's resolution, 1/2, 1/4;
    ``width``, 2 ``width``, 2 ``width`` channels, skip connections, LeakyReLU), then a
    Gaussian smoothing of the rate, upsampled to theta's grid (the finest).

    Input: :func:`anchored_features` on this level's grid (the rate at alignment
    is subtracted). Output [1, 3, *theta
    shape]: d(displacement)/dt in finest-grid voxels per unit time, fixed to moving.

    As in :class:`BSplineVelocity`, the rate is a linear 1x1 map of the features
    (starting as ``force_gain`` times the MIND demons force, converted from this
    level's voxels to finest-grid voxels by ``factor``) plus the UNet's correction,
    whose output layer starts at zero: an untrained model is a multi-scale
    MIND-demons optimizer.

    The sum is smoothed by a fixed Gaussian of ``sigma`` voxels of this level
    (truncated at 2 sigma, normalized to sum 1). The demons force is a per-voxel
    quantity, noisy and non-zero only at edges; integrated unsmoothed, it tears
    the image apart (folds) and leaves flat regions behind. Demons smooths its
    update for that reason (fluid-like regularization); here it also keeps the
    learned correction a smooth field at every stage of training, which the
    B-spline model gets from its control grid for free. (A fixed buffer, not
    learned: training must not be able to switch the regularization off.)
    sigma = 2 rather than 1.5: with the default gains, 1.5 let the untrained
    model fold on a synthetic B-spline deformation of 2 voxels mean (min det J
    -0.02); 2 did not (0.36) and recovered it as well.
    """

    def __init__(self, width: int = 16, output_scale: float = 4.0, factor: int = 1, force_gain: float = 1.0,
                 sigma: float = 2.0) -> None:
        super().__init__()
        self.enc0 = _conv(FEATURE_CHANNELS, width, 1)
        self.enc1 = _conv(width, 2 * width, 2)
        self.enc2 = _conv(2 * width, 2 * width, 2)
        self.dec1 = _conv(4 * width, 2 * width, 1)
        self.dec0 = _conv(3 * width, width, 1)
        self.output_scale = float(output_scale)
        self.out, self.shortcut = _rate_layers(width, force_gain * factor / self.output_scale)
        # Derived from sigma, not trained: kept out of the state dict (persistent=False).
        self.radius = int(math.ceil(2.0 * sigma))
        self.register_buffer("kernel", gaussian_kernel(sigma, self.radius), persistent=False)

    def smooth(self, field: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian of [1, 3, *S], edges replicated (a rate near a face is not pulled to zero)."""
        r = self.radius
        k = self.kernel.to(field.dtype)
        n = k.shape[0]
        weight = k.view(1, 1, n, 1, 1).expand(3, 1, n, 1, 1)
        field = F.conv3d(F.pad(field, (0, 0, 0, 0, r, r), mode="replicate"), weight, groups=3)
        weight = k.view(1, 1, 1, n, 1).expand(3, 1, 1, n, 1)
        field = F.conv3d(F.pad(field, (0, 0, r, r, 0, 0), mode="replicate"), weight, groups=3)
        weight = k.view(1, 1, 1, 1, n).expand(3, 1, 1, 1, n)
        return F.conv3d(F.pad(field, (r, r, 0, 0, 0, 0), mode="replicate"), weight, groups=3)

    def unet(self, features: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(features)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        # Resampled to the skip's size, not doubled: the level grids are odd-sized.
        d1 = self.dec1(torch.cat([resize(e2, [e1.shape[2], e1.shape[3], e1.shape[4]]), e1], 1))
        d0 = self.dec0(torch.cat([resize(d1, [e0.shape[2], e0.shape[3], e0.shape[4]]), e0], 1))
        return self.out(d0)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, fixed_cues: Tuple[torch.Tensor, torch.Tensor],
                t: float, theta_shape: List[int]) -> torch.Tensor:
        features = anchored_features(warped, fixed, fixed_cues, t)
        rates = self.unet(features) + self.shortcut(features)
        rates = self.smooth((rates[:1] - rates[1:]) * self.output_scale)
        # Already in finest-grid voxels: resampling onto theta's grid needs no rescaling.
        return F.interpolate(rates, size=theta_shape[2:], mode="trilinear", align_corners=True)


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
