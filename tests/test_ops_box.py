"""The in-place box-sum op (``itk_odereg::_box_sum_``), the LNCC loss's building block.

Against a convolution with a ones kernel and zero padding (the definition),
the pure-PyTorch fallback, opcheck, and its bad-input errors.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_and_cuda

from itk_odereg import ops
from itk_odereg.ops import _reference

CASES = [
    ((2, 3, 9, 11), (1, 2)),             # 2D, batch and channels
    ((1, 1, 6, 7, 8), (2, 3, 1)),        # 3D
    ((5, 1, 1, 4, 9, 5), (4, 4, 4)),     # stacked maps as LNCC uses them; radius beyond the axis
    ((1, 2, 7, 8, 9), (0, 2, 0)),        # radius 0 leaves an axis alone
]


def ones_convolution(x: torch.Tensor, radii) -> torch.Tensor:
    nd = len(radii)
    lead = x.shape[: x.dim() - nd]
    flat = x.reshape(-1, 1, *x.shape[x.dim() - nd:])
    # Windows wider than the axis see only zero padding beyond it.
    kernel = torch.ones(1, 1, *[2 * r + 1 for r in radii], dtype=x.dtype, device=x.device)
    conv = F.conv3d if nd == 3 else F.conv2d
    return conv(flat, kernel, padding=list(radii)).reshape(*lead, *x.shape[x.dim() - nd:])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,radii", CASES)
def test_box_sum_equals_a_ones_convolution(shape, radii, dtype, device):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype, device=device)
    expected = ones_convolution(x, radii)
    out = x.clone()
    returned = ops.box_sum_(out, radii)
    assert returned is out
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(_reference.box_sum_(x.clone(), radii), expected, **tol)


def test_box_sum_is_its_own_adjoint():
    # <box(a), b> == <a, box(b)>: why the LNCC backward may call it on the gradients.
    torch.manual_seed(1)
    a, b = torch.randn(2, 1, 1, 6, 7, 8, dtype=torch.float64).unbind(0)
    lhs = (ops.box_sum_(a.clone(), (2, 1, 3)) * b).sum()
    rhs = (a * ops.box_sum_(b.clone(), (2, 1, 3))).sum()
    torch.testing.assert_close(lhs, rhs, atol=1e-10, rtol=1e-12)


def test_box_sum_opcheck():
    x = torch.randn(2, 1, 5, 6, 7, dtype=torch.float64)
    result = torch.library.opcheck(torch.ops.itk_odereg._box_sum_.default, (x, [1, 2, 3]))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("make,radii,match", [
    (lambda: torch.randn(4, 5, 6).transpose(1, 2), [1, 1], "must be contiguous"),
    (lambda: torch.ones(4, 5, dtype=torch.int32), [1], "must be float32 or float64"),
    (lambda: torch.randn(4, 5), [1, -1], "must be non-negative"),
    (lambda: torch.randn(4, 5), [1, 1, 1], "must have 1 to x.dim"),
])
def test_box_sum_bad_input_names_the_problem(make, radii, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.itk_odereg._box_sum_.default(make(), radii)
