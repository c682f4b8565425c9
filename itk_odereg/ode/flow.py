"""The NODEO flow: integrate d phi / dt = v_theta(phi) with torchdiffeq, warping through our op.

Every particle of the working grid moves with the velocity field at its
current position: with phi(x) = x + u(x),

    du/dt (x) = v_t(x + u(x)),      u(0) = 0,  t in [0, 1],

where v_t = v_theta(u_t) is the network's velocity field. It is kept on the
network's coarse control grid and sampled at the particles directly
(``ops.sample_at``): one linear interpolation of the control field, rather
than upsampling it to the particles' grid and interpolating that again, which
blurred it twice and cost a full-grid pass and a full-grid scatter in the
backward at every step. Displacements and velocities are in axis millimetres
(see :mod:`itk_odereg.ode.velocity`); the ops take voxel units, so the flow
divides by the grid's spacing where it calls them. The state also carries the kinetic energy
int_0^1 mean |v_t(phi_t)|^2 dt, NODEO's velocity-magnitude regularizer, so it
is exact for every solver and for the adjoint method too.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .. import ops
from .velocity import VelocityNetwork

__all__ = ["NeuralODEFlow", "SOLVERS", "invert_displacement"]

# Solvers offered to users; every name is a torchdiffeq method.
SOLVERS = ("euler", "midpoint", "rk4", "dopri5", "adaptive_heun")
_FIXED_STEP = ("euler", "midpoint", "rk4")


class _Dynamics(nn.Module):
    def __init__(self, velocity: VelocityNetwork, shape: Sequence[int], spacing_mm: torch.Tensor) -> None:
        super().__init__()
        self.velocity = velocity
        self.shape = tuple(shape)
        self.register_buffer("spacing_view", spacing_mm.view(1, -1, *([1] * len(shape))))

    def forward(self, t, state, at_identity: bool = False):
        """(du/dt, d energy/dt); ``at_identity``: the caller knows u is exactly 0, where the
        velocity at the particles is the field itself (trilinear sampling at grid points)."""
        u_mm, _ = state
        if at_identity:
            # At the grid points the interpolated field is the upsampled one: one matrix per axis;
            # and the state network of a zero state is one value per channel (state None).
            v_at_particles = self.velocity(None, self.shape)
        else:
            # Velocity at the particles' current positions; border padding extends
            # the field beyond the box instead of stopping particles there.
            v_at_particles = ops.sample_at(self.velocity.control_field(u_mm), u_mm / self.spacing_view, "border")
        energy_rate = (v_at_particles**2).sum(1).mean()
        return v_at_particles, energy_rate


class NeuralODEFlow(nn.Module):
    """Integrates the NODEO flow on one grid.

    Args:
        velocity: the velocity network v_theta.
        steps: number of fixed steps on [0, 1] (fixed-step solvers), or the
            initial step count hint for adaptive ones.
        method: one of :data:`SOLVERS` (torchdiffeq names). Default "euler".
        adjoint: backpropagate with the adjoint method (memory independent of
            the number of steps, about twice the compute).
        rtol, atol: tolerances of adaptive solvers.
    """

    def __init__(
        self,
        velocity: VelocityNetwork,
        steps: int = 8,
        method: str = "euler",
        adjoint: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-3,
    ) -> None:
        super().__init__()
        if method not in SOLVERS:
            raise ValueError(f'Invalid method "{method}". Must be one of {list(SOLVERS)}')
        if steps < 1:
            raise ValueError(f"NeuralODEFlow(): 'steps' must be >= 1, got {steps}")
        self.velocity = velocity
        self.steps = int(steps)
        self.method = method
        self.adjoint = bool(adjoint)
        self.rtol, self.atol = float(rtol), float(atol)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, method={self.method!r}, adjoint={self.adjoint}"

    def forward(self, shape: Sequence[int], spacing_mm: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Displacement u(1) and kinetic energy on a grid.

        Args:
            shape: spatial size (tensor order) of the grid the particles live on.
            spacing_mm: its voxel spacing per tensor axis, mm.

        Returns:
            (u_mm [1, d, *shape] in axis mm, kinetic energy as a 0-dim tensor in mm^2).
        """
        param = self.velocity.coarse_velocity
        spacing = torch.as_tensor(list(spacing_mm), dtype=param.dtype, device=param.device)
        dynamics = _Dynamics(self.velocity, shape, spacing)
        u0 = torch.zeros(1, len(shape), *shape, dtype=param.dtype, device=param.device)
        e0 = torch.zeros((), dtype=param.dtype, device=param.device)
        t = torch.tensor([0.0, 1.0], dtype=param.dtype, device=param.device)
        if self.method == "euler" and not self.adjoint:
            return self._euler(dynamics, u0, e0)
        import torchdiffeq   # only for the other solvers: it costs start-up time and memory

        kwargs = {"method": self.method}
        if self.method in _FIXED_STEP:
            kwargs["options"] = {"step_size": 1.0 / self.steps}
        else:
            kwargs.update(rtol=self.rtol, atol=self.atol, options={"first_step": 1.0 / self.steps})
        if self.adjoint:
            u, e = torchdiffeq.odeint_adjoint(dynamics, (u0, e0), t, adjoint_params=tuple(self.velocity.parameters()),
                                              **kwargs)
        else:
            u, e = torchdiffeq.odeint(dynamics, (u0, e0), t, **kwargs)
        return u[-1], e[-1]

    def _euler(self, dynamics: _Dynamics, u: torch.Tensor, energy: torch.Tensor):
        """Fixed-step forward Euler on [0, 1], the same steps as torchdiffeq's "euler"
        without its per-step bookkeeping. The first step starts at the identity (u = 0)."""
        dt = 1.0 / self.steps
        for step in range(self.steps):
            # The dynamics are autonomous (they do not read t): no tensor is made for it.
            du, de = dynamics(step * dt, (u, energy), at_identity=step == 0)
            u = u + dt * du
            energy = energy + dt * de
        return u, energy

    @torch.no_grad()
    def velocity_history(self, shape: Sequence[int], spacing_mm: Sequence[float], steps: int | None = None):
        """The velocity fields v_t (axis mm, on the control grid) met along a fixed-step Euler
        integration on a grid of ``shape``, and u(1) there.

        Used to integrate the flow backward in time for the inverse map (sample a field at
        positions of any grid of the box with ``ops.sample_at``).
        """
        steps = steps or self.steps
        param = self.velocity.coarse_velocity
        spacing = torch.as_tensor(list(spacing_mm), dtype=param.dtype, device=param.device)
        view = spacing.view(1, -1, *([1] * len(shape)))
        u = torch.zeros(1, len(shape), *shape, dtype=param.dtype, device=param.device)
        fields = []
        for step in range(steps):
            v = self.velocity.control_field(u if step else None)
            fields.append(v)
            u = u + ops.sample_at(v, u / view, "border") / steps
        return fields, u


@torch.no_grad()
def invert_displacement(
    u_vox: torch.Tensor,
    initial: torch.Tensor | None = None,
    iterations: int = 20,
    tolerance: float = 1e-3,
) -> torch.Tensor:
    """Inverse of the map x -> x + u(x) on the same grid, voxel units.

    Solves w(y) = -u(y + w(y)) by fixed-point iteration, which converges for
    diffeomorphic maps with moderate strain; ``initial`` (for example the
    backward-integrated flow) speeds it up.

    Args:
        u_vox: Tensor[1, d, *S], voxel units, tensor order.
        initial: starting estimate of the inverse, same shape (default -u).
        iterations: maximum fixed-point iterations.
        tolerance: stop when the update is below this (voxels, max norm).

    Returns:
        Tensor[1, d, *S]: w, voxel units, with (x + w) o (x + u) ~ identity.
    """
    w = -u_vox if initial is None else initial.clone()
    for _ in range(iterations):
        new = ops.warp(u_vox, w, "border").neg_()
        # The old estimate is dropped after this, so its buffer takes the difference:
        # no whole-grid temporaries besides the new estimate.
        delta = w.sub_(new).abs_().max()
        w = new
        if delta < tolerance:
            break
    return w
