"""itk_odereg.ops.resample_linear against F.interpolate(align_corners=True) and the dense
matrices of core/separable.py, its adjoint, gradcheck, opcheck and its exact properties."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_and_cuda
from torch.autograd import gradcheck, gradgradcheck

from itk_odereg import ops
from itk_odereg.core.separable import apply_separable, resampling_matrices
from itk_odereg.ops import _reference

ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}

# (input shape, output shape): up, down, mixed, unchanged axes, single-sample axes either side,
# and the sizes NODEO resamples between (flow grid -> level grid, flow grid -> control grid).
CASES_2D = [((5, 7), (9, 4)), ((1, 6), (3, 6)), ((4, 1), (4, 5)), ((6, 5), (1, 5)), ((3, 3), (3, 3))]
CASES_3D = [((4, 5, 6), (7, 3, 6)), ((2, 1, 5), (5, 4, 5)), ((6, 4, 3), (1, 2, 9)),
            ((20, 24, 20), (28, 33, 28)), ((14, 16, 14), (20, 24, 20))]


def _interpolate(x, shape):
    return F.interpolate(x, size=list(shape), mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=True)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape_in,shape_out", CASES_2D + CASES_3D)
def test_resample_matches_interpolate_and_matrices(shape_in, shape_out, dtype, device):
    x = torch.randn(2, 3, *shape_in, dtype=dtype, device=device)
    out = ops.resample_linear(x, shape_out)
    assert out.shape == (2, 3, *shape_out) and out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(out, _interpolate(x, shape_out), atol=ATOL[dtype], rtol=0)
    matrices = resampling_matrices(shape_in, shape_out, dtype, x.device)
    torch.testing.assert_close(out, apply_separable(x, matrices), atol=ATOL[dtype], rtol=0)
    assert torch.equal(torch.ops.itk_odereg.resample_linear(x, list(shape_out)), out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape_in,shape_out", CASES_2D + CASES_3D)
def test_resample_backward_is_the_adjoint(shape_in, shape_out, dtype, device):
    x = torch.randn(2, 3, *shape_in, dtype=dtype, device=device)
    g = torch.randn(2, 3, *shape_out, dtype=dtype, device=device)
    adjoint = torch.ops.itk_odereg._resample_linear_backward(g, list(shape_in))
    assert adjoint.shape == x.shape
    lhs = (ops.resample_linear(x, shape_out).double() * g.double()).sum()
    rhs = (x.double() * adjoint.double()).sum()
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(lhs, rhs, atol=tol, rtol=tol)
    # It is what autograd uses, and it agrees with the reference's gradient.
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ops.resample_linear(leaf, shape_out), leaf, g)
    assert torch.equal(grad, adjoint)
    ref_leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_interpolate(ref_leaf, shape_out), ref_leaf, g)
    torch.testing.assert_close(grad, expected, atol=ATOL[dtype] * 20, rtol=1e-5)


@pytest.mark.parametrize("shape_in,shape_out", [((3, 5), (6, 2)), ((3, 4, 2), (2, 6, 5)), ((1, 3, 4), (3, 1, 4))])
def test_resample_gradcheck_and_gradgradcheck(shape_in, shape_out):
    x = torch.randn(1, 2, *shape_in, dtype=torch.float64, requires_grad=True)
    fn = lambda t: ops.resample_linear(t, shape_out)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("args", [((2, 3, 4, 5, 6), (5, 2, 7)), ((1, 2, 6, 5), (3, 9))])
def test_resample_opcheck(args):
    size, shape = args
    x = torch.randn(*size, dtype=torch.float64, requires_grad=True)
    result = torch.library.opcheck(torch.ops.itk_odereg.resample_linear.default, (x, list(shape)))
    assert all(v == "SUCCESS" for v in result.values()), result
    g = torch.randn(*size[:2], *shape, dtype=torch.float64, requires_grad=True)
    result = torch.library.opcheck(torch.ops.itk_odereg._resample_linear_backward.default, (g, list(size[2:])))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_resample_exact_properties():
    # A field linear in the index is reproduced exactly (up to rounding) on any grid of the box.
    shape_in, shape_out = (5, 9, 4), (13, 3, 7)
    z, y, x = torch.meshgrid(*[torch.linspace(0, 1, s, dtype=torch.float64) for s in shape_in], indexing="ij")
    field = (2.0 * z - 3.0 * y + 0.5 * x + 1.0)[None, None]
    zo, yo, xo = torch.meshgrid(*[torch.linspace(0, 1, s, dtype=torch.float64) for s in shape_out], indexing="ij")
    torch.testing.assert_close(ops.resample_linear(field, shape_out),
                               (2.0 * zo - 3.0 * yo + 0.5 * xo + 1.0)[None, None], atol=1e-12, rtol=0)
    # Corner samples stay where they are; an unchanged size is an exact copy, never the input itself.
    t = torch.randn(1, 2, *shape_in)
    out = ops.resample_linear(t, shape_out)
    for corner in [(0, 0, 0), (-1, -1, -1), (0, -1, 0), (-1, 0, -1)]:
        torch.testing.assert_close(out[(..., *corner)], t[(..., *corner)], atol=1e-6, rtol=0)
    same = ops.resample_linear(t, shape_in)
    assert torch.equal(same, t) and same.data_ptr() != t.data_ptr()


def test_resample_non_contiguous_input():
    x = torch.randn(2, 5, 6, 7, 3, dtype=torch.float64).movedim(-1, 1)
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.resample_linear(x, (9, 4, 8)), _interpolate(x.contiguous(), (9, 4, 8)),
                               atol=1e-12, rtol=0)


def test_resample_multithreaded_and_deterministic():
    """Both passes split the work over threads (rows forward, column blocks in the adjoint):
    the same bits for any thread count."""
    x = torch.randn(1, 3, 27, 32, 27, dtype=torch.float64)
    g = torch.randn(1, 3, 40, 48, 40, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((ops.resample_linear(x, (40, 48, 40)),
                            torch.ops.itk_odereg._resample_linear_backward(g, [27, 32, 27])))
    finally:
        torch.set_num_threads(threads)
    for out, adj in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(adj, results[0][1])
    torch.testing.assert_close(results[0][0], _interpolate(x, (40, 48, 40)), atol=1e-12, rtol=0)


def test_resample_fallback_matches_kernel():
    x = torch.randn(1, 3, 6, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(_reference.resample_linear(x, (3, 8, 4)), ops.resample_linear(x, (3, 8, 4)),
                               atol=1e-12, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")
def test_resample_under_torchscript_and_compile():
    def upsample_and_square(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.itk_odereg.resample_linear(x, [7, 9, 5]).square().sum()

    x = torch.randn(1, 3, 4, 5, 3, dtype=torch.float64)
    scripted = torch.jit.script(upsample_and_square)
    assert "itk_odereg::resample_linear" in str(scripted.graph)
    torch._dynamo.reset()
    compiled = torch.compile(upsample_and_square, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (upsample_and_square, scripted, compiled):
        leaf = x.clone().requires_grad_(True)
        value = fn(leaf)
        grads.append((value.detach(), torch.autograd.grad(value, leaf)[0]))
    for value, grad in grads[1:]:
        torch.testing.assert_close(value, grads[0][0], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(grad, grads[0][1], atol=1e-12, rtol=1e-12)
