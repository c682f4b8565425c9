"""Adam (and AMSGrad) for the per-pair optimizations of the affine and NODEO stages.

The update is ``torch.optim.Adam``'s (Kingma and Ba, with the AMSGrad variant of
Reddi et al.; default betas (0.9, 0.999), eps 1e-8, no weight decay), written
here because constructing a ``torch.optim`` optimizer imports torch's compiler
stack (``torch._dynamo`` and sympy): about 0.8 s of start-up, a quarter of a
whole 2 mm registration at greedy's pace. It updates all parameters of a group
with a few ``torch._foreach_*`` calls, as torch's "foreach" implementation does.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

__all__ = ["Adam"]


class Adam:
    """Minimal Adam over parameter groups: ``zero_grad()``, ``step()``.

    Args:
        groups: dicts with ``"params"`` (an iterable of tensors) and ``"lr"``.
        amsgrad: use the running maximum of the second moment (AMSGrad).
        betas, eps: as in ``torch.optim.Adam``.
    """

    def __init__(self, groups: Sequence[dict], amsgrad: bool = False, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = []
        for group in groups:
            params = [p for p in group["params"]]
            if not params:
                continue
            lr = float(group["lr"])
            if not lr > 0:
                raise ValueError(f"Adam(): learning rate must be positive, got {lr}")
            self.groups.append({
                "params": params, "lr": lr,
                "exp_avg": [torch.zeros_like(p) for p in params],
                "exp_avg_sq": [torch.zeros_like(p) for p in params],
                "max_exp_avg_sq": [torch.zeros_like(p) for p in params] if amsgrad else None,
            })
        self.amsgrad = bool(amsgrad)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.steps = 0

    @staticmethod
    def of(params: Iterable[torch.Tensor], lr: float, **kwargs) -> "Adam":
        """One group of parameters with one learning rate."""
        return Adam([{"params": list(params), "lr": lr}], **kwargs)

    def zero_grad(self) -> None:
        for group in self.groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        bias1 = 1.0 - self.beta1 ** self.steps
        bias2_sqrt = math.sqrt(1.0 - self.beta2 ** self.steps)
        for group in self.groups:
            pairs = [(k, p) for k, p in enumerate(group["params"]) if p.grad is not None]
            if not pairs:
                continue
            index = [k for k, _ in pairs]
            params = [p for _, p in pairs]
            grads = [p.grad for _, p in pairs]
            exp_avg = [group["exp_avg"][k] for k in index]
            exp_avg_sq = [group["exp_avg_sq"][k] for k in index]
            torch._foreach_lerp_(exp_avg, grads, 1.0 - self.beta1)
            torch._foreach_mul_(exp_avg_sq, self.beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1.0 - self.beta2)
            second = exp_avg_sq
            if self.amsgrad:
                second = [group["max_exp_avg_sq"][k] for k in index]
                torch._foreach_maximum_(second, exp_avg_sq)
            denom = torch._foreach_sqrt(second)
            torch._foreach_div_(denom, bias2_sqrt)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, exp_avg, denom, -group["lr"] / bias1)
