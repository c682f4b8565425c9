"""A pointwise network with tanh after every layer: NODEO's state network as one op.

``tanh_mlp(x, weights, biases)`` on ``x`` [C_0, N] (a field [1, C_0, *S] viewed as
channels by points) is

    a_0 = x,   a_{l+1} = tanh(weights[l] @ a_l + biases[l][:, None]),   returns a_L,

the stack of 1x1 convolutions with tanh between them (and after the last) that
:class:`itk_odereg.ode.velocity.VelocityNetwork` evaluates on its control grid at
every Euler step. The compiled op (``itk_odereg::tanh_mlp``, CPU and CUDA) keeps a
block of points' activations in cache through all the layers, forward and
backward, where the separate torch ops make a pass over memory per layer and
direction. Its float32 tanh is a rational fit (at most 3.2e-7 from the exact
value, 5 ulp near +-1; torch's is 3.1e-8): ``docs/methods.md``, "The state
network as one op". float64 uses the exact tanh.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..extension import _HAS_OPS
from . import _checks, _reference

__all__ = ["tanh_mlp"]


def tanh_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply a tanh network pointwise to [channels, points].

    Args:
        x: Tensor[C_0, N], float32 or float64, CPU or CUDA (no units: the caller scales).
        weights: one Tensor[C_{l+1}, C_l] per layer (1 to 8 layers, widths 1 to 32).
        biases: one Tensor[C_{l+1}] per layer.

    Returns:
        Tensor[C_L, N] in (-1, 1), differentiable once with respect to ``x``, the
        weights and the biases (double backward raises).
    """
    weights, biases = list(weights), list(biases)
    if _HAS_OPS and x.device.type in ("cpu", "cuda"):
        return torch.ops.itk_odereg.tanh_mlp.default(x, weights, biases)
    _checks.check_tanh_mlp_args(x, weights, biases, "tanh_mlp")
    return _reference.tanh_mlp(x, weights, biases)


if _HAS_OPS:

    @torch.library.register_fake("itk_odereg::tanh_mlp")
    def _tanh_mlp_fake(x, weights, biases):
        _checks.check_tanh_mlp_args(x, weights, biases, "tanh_mlp")
        return x.new_empty((weights[-1].shape[0], x.shape[1]))

    @torch.library.register_fake("itk_odereg::_tanh_mlp_backward")
    def _tanh_mlp_backward_fake(grad_output, x, weights, biases):
        _checks.check_tanh_mlp_args(x, weights, biases, "_tanh_mlp_backward")
        _checks.check_floating(grad_output, "_tanh_mlp_backward", "grad_output")
        torch._check(tuple(grad_output.shape) == (weights[-1].shape[0], x.shape[1]),
                     lambda: f"itk_odereg._tanh_mlp_backward(): 'grad_output' must have shape "
                     f"[{weights[-1].shape[0]}, {x.shape[1]}], got {list(grad_output.shape)}")
        return [torch.empty_like(x)] + [torch.empty_like(w) for w in weights] + [torch.empty_like(b) for b in biases]
