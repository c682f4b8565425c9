"""itk_odereg.ops.bspline_to_dense against the explicit-basis reference, and its exact properties."""
from __future__ import annotations

import itertools

import pytest
import torch
from conftest import cpu_and_cuda
from torch.autograd import gradcheck, gradgradcheck

from itk_odereg import ops
from itk_odereg.ops import _reference

ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}

# (dense shape, control spacing): mixed spacings, spacing 1, spacing larger than the size.
CASES_2D = [((7, 9), (3, 4)), ((5, 5), (1, 1)), ((2, 3), (5, 4)), ((1, 6), (2, 2))]
CASES_3D = [((6, 7, 8), (3, 4, 5)), ((4, 5, 3), (2, 1, 3)), ((3, 2, 5), (4, 4, 2))]


def random_control(shape, spacing, n=2, c=3, dtype=torch.float64, device="cpu"):
    grid = ops.bspline_control_shape(shape, spacing)
    return torch.randn(n, c, *grid, dtype=dtype, device=device)


def test_bspline_control_shape_helper():
    assert ops.bspline_control_shape((7, 9), (3, 4)) == [6, 6]
    assert ops.bspline_control_shape((6, 7, 8), (3, 4, 5)) == [5, 5, 5]
    assert ops.bspline_control_shape((1, 1), (1, 3)) == [4, 4]
    assert ops.bspline_control_shape((10, 10, 10), (1, 9, 10)) == [13, 5, 4]
    assert ops.bspline_control_shape([160, 192, 224], [4, 4, 4]) == [43, 51, 59]
    # floor((S - 1) / s) + 4 exactly
    for size, spacing in itertools.product(range(1, 12), range(1, 6)):
        assert ops.bspline_control_shape((size, 3), (spacing, 1)) == [(size - 1) // spacing + 4, 6]
    with pytest.raises(ValueError, match="same length"):
        ops.bspline_control_shape((7, 9), (3,))
    with pytest.raises(ValueError, match="positive"):
        ops.bspline_control_shape((7, 9), (0, 3))
    with pytest.raises(ValueError, match="positive"):
        ops.bspline_control_shape((0, 9), (3, 3))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("shape,spacing", CASES_2D + CASES_3D)
def test_bspline_matches_reference(shape, spacing, c, dtype, device):
    control = random_control(shape, spacing, n=2, c=c, dtype=dtype, device=device)
    out = ops.bspline_to_dense(control, shape, spacing)
    expected = _reference.bspline_to_dense(control, shape, spacing)
    assert out.shape == (2, c, *shape) and out.dtype == dtype and out.device == control.device
    torch.testing.assert_close(out, expected, atol=ATOL[dtype], rtol=0)
    # Same result straight through the dispatcher.
    direct = torch.ops.itk_odereg.bspline_to_dense(control, list(shape), list(spacing))
    assert torch.equal(direct, out)


@pytest.mark.parametrize("shape,spacing", [((7, 9), (3, 4)), ((6, 7, 8), (3, 4, 5))])
def test_bspline_non_contiguous_control(shape, spacing):
    grid = ops.bspline_control_shape(shape, spacing)
    ndim = len(shape)
    # Channels-last storage, a permuted view.
    control = torch.randn(2, *grid, 3, dtype=torch.float64).movedim(-1, 1)
    assert not control.is_contiguous()
    expected = _reference.bspline_to_dense(control.contiguous(), shape, spacing)
    torch.testing.assert_close(ops.bspline_to_dense(control, shape, spacing), expected, atol=1e-12, rtol=0)
    # Every other element of a bigger tensor.
    big = torch.randn(2, 6, *[2 * g for g in grid], dtype=torch.float64)
    control = big[(slice(None), slice(None, None, 2)) + tuple(slice(None, None, 2) for _ in range(ndim))]
    assert not control.is_contiguous() and control.shape[2:] == tuple(grid)
    expected = _reference.bspline_to_dense(control.contiguous(), shape, spacing)
    torch.testing.assert_close(ops.bspline_to_dense(control, shape, spacing), expected, atol=1e-12, rtol=0)
    # A batch-expanded grid (stride 0).
    control = torch.randn(1, 3, *grid, dtype=torch.float64).expand(2, 3, *grid)
    expected = _reference.bspline_to_dense(control.contiguous(), shape, spacing)
    torch.testing.assert_close(ops.bspline_to_dense(control, shape, spacing), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,spacing", [((7, 9), (3, 4)), ((6, 7, 8), (3, 4, 5))])
def test_bspline_gradient_matches_reference(shape, spacing, dtype):
    control = random_control(shape, spacing, dtype=dtype)
    grad_output = torch.randn(2, 3, *shape, dtype=dtype)
    c1 = control.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(ops.bspline_to_dense(c1, shape, spacing), c1, grad_output)
    c2 = control.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(_reference.bspline_to_dense(c2, shape, spacing), c2, grad_output)
    torch.testing.assert_close(g1, g2, atol=ATOL[dtype] * 10, rtol=1e-5)


@pytest.mark.parametrize("shape,spacing", [((5, 7), (2, 3)), ((4, 5, 6), (3, 4, 5)), ((2, 3), (5, 1))])
def test_bspline_gradcheck_and_gradgradcheck(shape, spacing):
    control = random_control(shape, spacing, n=2, c=2).requires_grad_(True)
    fn = lambda c: ops.bspline_to_dense(c, shape, spacing)  # noqa: E731
    assert gradcheck(fn, (control,))
    assert gradgradcheck(fn, (control,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,spacing", CASES_2D + CASES_3D)
def test_bspline_backward_is_the_adjoint(shape, spacing, dtype):
    grid = ops.bspline_control_shape(shape, spacing)
    control = random_control(shape, spacing, dtype=dtype)
    g = torch.randn(2, 3, *shape, dtype=dtype)
    forward = ops.bspline_to_dense(control, shape, spacing)
    adjoint = torch.ops.itk_odereg._bspline_to_dense_backward(g, grid, list(spacing))
    assert adjoint.shape == control.shape
    lhs = (forward.double() * g.double()).sum()
    rhs = (control.double() * adjoint.double()).sum()
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(lhs, rhs, atol=tol, rtol=tol)
    # And it is exactly what autograd uses as the backward.
    c = control.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ops.bspline_to_dense(c, shape, spacing), c, g)
    assert torch.equal(grad, adjoint)
    # Adjoint of a non-contiguous grad_output.
    g_nc = torch.randn(2, *shape, 3, dtype=dtype).movedim(-1, 1)
    torch.testing.assert_close(
        torch.ops.itk_odereg._bspline_to_dense_backward(g_nc, grid, list(spacing)),
        torch.ops.itk_odereg._bspline_to_dense_backward(g_nc.contiguous(), grid, list(spacing)),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("shape,spacing", [((7, 9), (3, 4)), ((6, 7, 8), (3, 4, 5)), ((5, 6), (1, 2))])
def test_bspline_linear_control_gives_exactly_linear_field(shape, spacing):
    """c[k] = a . k + b gives u(x) = sum_d a_d (x_d / s_d + 1) + b: control k sits at voxel (k - 1) s."""
    ndim = len(shape)
    grid = ops.bspline_control_shape(shape, spacing)
    a = torch.tensor([[0.7, -1.3, 2.1][:ndim], [-0.4, 0.25, 1.5][:ndim]], dtype=torch.float64)  # per channel
    b = torch.tensor([0.3, -2.0], dtype=torch.float64)
    k = _reference.identity_grid(grid, torch.float64, "cpu")[0]  # [d, *G]
    control = (torch.einsum("cd,d...->c...", a, k) + b.view(2, *([1] * ndim)))[None]
    x = _reference.identity_grid(shape, torch.float64, "cpu")[0]
    s = torch.tensor(spacing, dtype=torch.float64).view(ndim, *([1] * ndim))
    expected = (torch.einsum("cd,d...->c...", a, x / s + 1) + b.view(2, *([1] * ndim)))[None]
    out = ops.bspline_to_dense(control, shape, spacing)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,spacing", CASES_2D + CASES_3D)
def test_bspline_partition_of_unity(shape, spacing, dtype):
    grid = ops.bspline_control_shape(shape, spacing)
    control = torch.full((2, 2, *grid), 1.0, dtype=dtype)
    control[:, 1] = -3.5
    out = ops.bspline_to_dense(control, shape, spacing)
    expected = torch.empty(2, 2, *shape, dtype=dtype)
    expected[:, 0] = 1.0
    expected[:, 1] = -3.5
    torch.testing.assert_close(out, expected, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize(
    "shape,spacing,k",
    [((10, 12), (3, 4), (2, 3)), ((9, 8), (2, 3), (1, 1)), ((7, 9, 11), (3, 4, 5), (3, 2, 2))],
)
def test_bspline_single_control_point_peak_location(shape, spacing, k):
    """A lone control point k peaks with B(0) = 2/3 per axis at voxel (k - 1) * s, and 1/6 one spacing away."""
    ndim = len(shape)
    grid = ops.bspline_control_shape(shape, spacing)
    control = torch.zeros(1, 1, *grid, dtype=torch.float64)
    control[(0, 0) + tuple(k)] = 1.0
    out = ops.bspline_to_dense(control, shape, spacing)[0, 0]
    peak = tuple((kk - 1) * s for kk, s in zip(k, spacing))
    assert all(0 <= p < size for p, size in zip(peak, shape))
    assert out[peak].item() == pytest.approx((2 / 3) ** ndim, abs=1e-14)
    assert out.max().item() == pytest.approx((2 / 3) ** ndim, abs=1e-14)
    assert tuple(torch.nonzero(out == out.max())[0].tolist()) == peak
    for d in range(ndim):
        for step in (-1, 1):
            q = list(peak)
            q[d] += step * spacing[d]
            if 0 <= q[d] < shape[d]:
                assert out[tuple(q)].item() == pytest.approx((2 / 3) ** (ndim - 1) / 6, abs=1e-14)
            q[d] = peak[d] + step * 2 * spacing[d]
            if 0 <= q[d] < shape[d]:
                assert out[tuple(q)].item() == 0.0
    # Separable: the field is the outer product of the 1-D basis columns.
    expected = torch.ones(())
    for size, s, kk in zip(shape, spacing, k):
        column = _reference.bspline_basis_matrix(size, s)[:, kk]
        expected = expected[..., None] * column
    torch.testing.assert_close(out, expected.to(out.dtype), atol=1e-14, rtol=0)


@pytest.mark.parametrize("shape,spacing", [((7, 9), (3, 4)), ((5, 6, 7), (3, 4, 5))])
def test_bspline_opcheck(shape, spacing):
    control = random_control(shape, spacing, n=2, c=2).requires_grad_(True)
    for args in ((control, list(shape), list(spacing)), (control.detach(), list(shape), list(spacing))):
        result = torch.library.opcheck(torch.ops.itk_odereg.bspline_to_dense.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result
    grid = ops.bspline_control_shape(shape, spacing)
    g = torch.randn(2, 2, *shape, dtype=torch.float64, requires_grad=True)
    result = torch.library.opcheck(torch.ops.itk_odereg._bspline_to_dense_backward.default, (g, grid, list(spacing)))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("shape,spacing", [((70, 80), (3, 4)), ((16, 20, 24), (2, 3, 5))])
def test_bspline_multithreaded(shape, spacing):
    """Large enough for several parallel tasks per pass, forward and adjoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        control = random_control(shape, spacing, n=2, c=3)
        g = torch.randn(2, 3, *shape, dtype=torch.float64)
        c1 = control.clone().requires_grad_(True)
        out = ops.bspline_to_dense(c1, shape, spacing)
        (grad,) = torch.autograd.grad(out, c1, g)
        c2 = control.clone().requires_grad_(True)
        ref = _reference.bspline_to_dense(c2, shape, spacing)
        (ref_grad,) = torch.autograd.grad(ref, c2, g)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-12)
    finally:
        torch.set_num_threads(threads)
