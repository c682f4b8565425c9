"""Image features the MS-ODENet networks see: gradients, MIND, the demons force and its rigid fit (TorchScript)."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.differences import image_gradient, normalized_gradient
from ._geometry import _centred_points, _grid


def _conv(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


def _central_gradient(image: torch.Tensor) -> torch.Tensor:
    """[1, 3, *S] central differences (voxel units) of [1, 1, *S]: :func:`image_gradient` with
    the ``"replicate_half"`` boundary (at the faces, the edge replicated, half the one-sided
    difference; the NGF loss uses the full one: the shipped weights were trained on this one)."""
    return image_gradient(image, None, "replicate_half")


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
    """grad I / sqrt(|grad I|^2 + eps^2) [1, 3, *S] of [1, 1, *S] (:func:`normalized_gradient` of
    :func:`_central_gradient`'s differences): ``edge_epsilon`` is the gradient magnitude (intensity
    per voxel, images in [0, 1]) below which an edge fades out. (A default argument, not a
    module constant: TorchScript cannot read module-level floats.)"""
    return normalized_gradient(image, edge_epsilon, None, "replicate_half")


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
