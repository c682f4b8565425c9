"""The per-level networks d theta / dt of the three parameterizations (TorchScript)."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.separable import gaussian_kernel
from ._geometry import resize
from ._features import EDGES, FEATURE_CHANNELS, MIND_FORCE, _conv, _coordinates, anchored_features, rigid_force_fit


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
        # The float32 kernel, normalized to sum 1 (core.separable.gaussian_kernel's defaults).
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
