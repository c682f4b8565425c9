"""NODEO's velocity network: v_theta maps the current state of the flow to a smooth velocity field.

Units: every field here is in *axis millimetres*: displacement or velocity
components along the tensor axes (z, y, x) of the working grid, in mm (voxel
units times the voxel spacing of that axis). Being independent of the voxel
size, the same module serves every level of a coarse-to-fine pyramid; the
flow converts to voxel units only where it calls the ``warp`` op.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .. import ops
from ..core.separable import apply_separable, compose, gaussian_matrices, resampling_matrices

__all__ = ["VelocityNetwork"]


class VelocityNetwork(nn.Module):
    """v_theta(phi) of NODEO: the velocity field (axis mm) as a function of the flow's state.

    Design (after the authors' "BrainNet", for any image size): the velocity
    lives on a coarse *control grid*. It is the sum of a directly optimized
    coarse velocity (the counterpart of BrainNet's fully connected output
    bias, the path that makes optimization converge quickly) and a small
    convolutional network of the current displacement, which makes the flow a
    genuine neural ODE (the velocity depends on the state, hence on time).
    The coarse velocity is Gaussian-smoothed, which keeps the field regular,
    then upsampled linearly to the grid the flow is integrated on.

    Args:
        control_shape: spatial size of the control grid (tensor order).
        control_spacing_mm: physical spacing of the control grid per axis (tensor order), mm.
        smoothing_mm: standard deviation of the Gaussian smoothing, mm.
        hidden_channels: width of the state network (0 disables it: a
            stationary velocity field).
        max_speed_mm: the state network's output is bounded by tanh to this
            speed, which keeps early iterations from diverging.
    """

    def __init__(
        self,
        control_shape: Sequence[int],
        control_spacing_mm: Sequence[float],
        smoothing_mm: float = 6.0,
        hidden_channels: int = 16,
        max_speed_mm: float = 5.0,
    ) -> None:
        super().__init__()
        ndim = len(control_shape)
        if ndim not in (2, 3):
            raise ValueError(f"VelocityNetwork(): 'control_shape' must have 2 or 3 sizes, got {list(control_shape)}")
        if len(control_spacing_mm) != ndim or any(s <= 0 for s in control_spacing_mm):
            raise ValueError(
                f"VelocityNetwork(): 'control_spacing_mm' must have {ndim} positive values, got {list(control_spacing_mm)}"
            )
        self.ndim = ndim
        self.control_shape = tuple(int(s) for s in control_shape)
        self.control_spacing_mm = tuple(float(s) for s in control_spacing_mm)
        self.smoothing_mm = float(smoothing_mm)
        self.max_speed_mm = float(max_speed_mm)
        self.hidden_channels = int(hidden_channels)
        self.coarse_velocity = nn.Parameter(torch.zeros(1, ndim, *self.control_shape))
        if hidden_channels > 0:
            # A pointwise network of the state (1x1 convolutions): cheap on any
            # grid, and the smoothing below makes its output spatially regular.
            conv = nn.Conv3d if ndim == 3 else nn.Conv2d
            self.state_net = nn.Sequential(
                conv(ndim, hidden_channels, 1),
                nn.Tanh(),
                conv(hidden_channels, hidden_channels, 1),
                nn.Tanh(),
                conv(hidden_channels, ndim, 1),
            )
            # Start as the identity flow: the network's correction is zero at first.
            nn.init.zeros_(self.state_net[-1].weight)
            nn.init.zeros_(self.state_net[-1].bias)
        else:
            self.state_net = None

    def extra_repr(self) -> str:
        return (
            f"control_shape={self.control_shape}, control_spacing_mm={self.control_spacing_mm}, "
            f"smoothing_mm={self.smoothing_mm}, hidden_channels={self.hidden_channels}"
        )

    def _control_input(self, state_mm: torch.Tensor) -> torch.Tensor:
        """The state on the control grid (corner-aligned linear resampling)."""
        return ops.resample_linear(state_mm, self.control_shape)

    def _raw(self, state_mm: torch.Tensor | None) -> torch.Tensor:
        """Unsmoothed velocity on the control grid, axis mm."""
        velocity = self.coarse_velocity
        if self.state_net is None:
            return velocity
        if state_mm is None:
            # The identity state (u = 0 everywhere): the pointwise network gives one value per
            # channel there, so it is evaluated once and broadcast, not at every control point.
            state = velocity.new_zeros((1, self.ndim) + (1,) * self.ndim)
        else:
            state = self._control_input(state_mm)
        # Inputs scaled to O(1) for typical brain displacements (~10 mm).
        return velocity + self.max_speed_mm * self._bounded_response(state / 10.0)

    def _bounded_response(self, state: torch.Tensor) -> torch.Tensor:
        """``tanh(state_net(state))`` on [1, d, *S], in (-1, 1): the network's 1x1 convolutions
        with tanh between them and the bounding tanh after the last are one pointwise op
        (:func:`itk_odereg.ops.tanh_mlp`, the same function with the same parameters), which
        keeps a block of points in cache through every layer, forward and backward."""
        convolutions = [layer for layer in self.state_net if not isinstance(layer, nn.Tanh)]
        out = ops.tanh_mlp(state.reshape(state.shape[1], -1),
                           [conv.weight.reshape(conv.out_channels, -1) for conv in convolutions],
                           [conv.bias for conv in convolutions])
        return out.reshape(1, -1, *state.shape[2:])

    def _smoothing(self, like: torch.Tensor) -> list:
        sigma = [self.smoothing_mm / h for h in self.control_spacing_mm]
        return gaussian_matrices(self.control_shape, sigma, like.dtype, like.device)

    def control_field(self, state_mm: torch.Tensor | None) -> torch.Tensor:
        """The smoothed velocity on the control grid, [1, d, *control_shape], axis mm.

        The velocity anywhere in the box is its corner-aligned linear
        interpolation: :meth:`forward` on a grid, ``ops.sample_at`` at particles.
        """
        return apply_separable(self._raw(state_mm), self._smoothing(self.coarse_velocity))

    def forward(self, state_mm: torch.Tensor | None, shape: Sequence[int]) -> torch.Tensor:
        """Velocity on a grid of ``shape`` spanning the same box, [1, d, *shape], axis mm.

        The Gaussian smoothing and the corner-aligned linear upsampling to
        ``shape`` are one matrix per axis (:mod:`itk_odereg.core.separable`).

        Args:
            state_mm: current displacement [1, d, *S] in axis mm on any
                corner-aligned grid of the box, or None for the identity state (u = 0),
                which gives the same field without resampling a zero state.
            shape: spatial size of the grid to return the velocity on (tensor order).
        """
        raw = self._raw(state_mm)
        upsample = resampling_matrices(self.control_shape, shape, raw.dtype, raw.device)
        return apply_separable(raw, compose(upsample, self._smoothing(raw)))
