"""Regularizers (diffusion, bending, Jacobian determinant, Jacobian penalty).

Against the finite-difference references, closed forms and gradcheck/opcheck.
"""
from __future__ import annotations

import pytest
import torch
from conftest import cpu_and_cuda
from torch.autograd import gradcheck

from itk_odereg import ops
from itk_odereg.ops import _reference

SHAPES = {2: (5, 6), 3: (4, 5, 6)}
SPACINGS = {2: [None, (1.0, 1.0), (0.7, 1.9)], 3: [None, (1.0, 1.0, 1.0), (0.5, 1.25, 2.0)]}
ENERGIES = ["diffusion_energy", "bending_energy"]


def tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-11, rtol=1e-11)


def energy_cases():
    for name in ENERGIES:
        for ndim in (2, 3):
            for spacing in SPACINGS[ndim]:
                yield pytest.param(name, ndim, spacing, id=f"{name}-{ndim}d-{'none' if spacing is None else spacing}")


def displacement(ndim, n=2, dtype=torch.float64, device="cpu", scale=1.0, shape=None):
    shape = SHAPES[ndim] if shape is None else shape
    return torch.randn(n, ndim, *shape, dtype=dtype, device=device) * scale


def grid(shape):
    return _reference.identity_grid(shape, torch.float64, "cpu")[0]  # [d, *shape], tensor order


def affine_field(A, t, shape, n=1):
    """u(x) = A x + t on voxel indices (tensor order), [n, d, *shape]."""
    x = grid(shape)
    u = torch.einsum("ij,j...->i...", A, x) + t.view(-1, *([1] * len(shape)))
    return u[None].expand(n, *u.shape).contiguous()


# --------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,ndim,spacing", list(energy_cases()))
def test_energies_match_reference(name, ndim, spacing, dtype, device):
    u = displacement(ndim, dtype=dtype, device=device)
    out = getattr(ops, name)(u, spacing)
    expected = getattr(_reference, name)(u, spacing)
    assert out.shape == () and out.dtype == dtype and out.device == u.device
    torch.testing.assert_close(out, expected, **tol(dtype))
    # Gradients too.
    u1 = u.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(getattr(ops, name)(u1, spacing), u1)
    u2 = u.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(getattr(_reference, name)(u2, spacing), u2)
    torch.testing.assert_close(g1, g2, **tol(dtype))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_determinant_matches_reference(ndim, dtype, device):
    u = displacement(ndim, dtype=dtype, device=device, scale=0.6)
    det = ops.jacobian_determinant(u)
    assert det.shape == (2, *SHAPES[ndim]) and det.dtype == dtype
    torch.testing.assert_close(det, _reference.jacobian_determinant(u), **tol(dtype))
    go = torch.randn_like(det)
    u1 = u.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(ops.jacobian_determinant(u1), u1, go)
    u2 = u.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(_reference.jacobian_determinant(u2), u2, go)
    torch.testing.assert_close(g1, g2, **tol(dtype))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.5, 1.2])
@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_penalty_matches_reference(ndim, threshold, dtype, device):
    u = displacement(ndim, dtype=dtype, device=device, scale=0.6)
    assert (_reference.jacobian_determinant(u) < threshold).any()  # the penalty is active somewhere
    out = ops.jacobian_penalty(u, threshold)
    expected = _reference.jacobian_penalty(u, threshold)
    assert out.item() > 0
    torch.testing.assert_close(out, expected, **tol(dtype))
    u1 = u.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(ops.jacobian_penalty(u1, threshold), u1)
    u2 = u.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(_reference.jacobian_penalty(u2, threshold), u2)
    torch.testing.assert_close(g1, g2, **tol(dtype))


def test_jacobian_penalty_default_threshold_is_half():
    u = displacement(2, scale=0.7)
    assert ops.jacobian_penalty(u).item() == ops.jacobian_penalty(u, 0.5).item()
    assert torch.ops.itk_odereg.jacobian_penalty(u).item() == ops.jacobian_penalty(u, 0.5).item()


@pytest.mark.parametrize("ndim", [2, 3])
def test_regularizers_non_contiguous(ndim):
    shape = SHAPES[ndim]
    u_nc = (torch.randn(2, *shape, ndim, dtype=torch.float64) * 0.5).movedim(-1, 1)
    big = torch.randn(2, ndim, *[2 * s for s in shape], dtype=torch.float64) * 0.5
    u_strided = big[(slice(None), slice(None)) + tuple(slice(None, None, 2) for _ in shape)]
    spacing = SPACINGS[ndim][-1]
    for u in (u_nc, u_strided):
        assert not u.is_contiguous()
        uc = u.contiguous()
        for name in ENERGIES:
            torch.testing.assert_close(
                getattr(ops, name)(u, spacing), getattr(_reference, name)(uc, spacing), atol=1e-11, rtol=1e-11
            )
        torch.testing.assert_close(
            ops.jacobian_determinant(u), _reference.jacobian_determinant(uc), atol=1e-11, rtol=1e-11
        )
        torch.testing.assert_close(
            ops.jacobian_penalty(u, 1.2), _reference.jacobian_penalty(uc, 1.2), atol=1e-11, rtol=1e-11
        )
        # Backward with a non-contiguous incoming gradient.
        ur = u.clone().requires_grad_(True)
        det = ops.jacobian_determinant(ur)
        go = torch.randn(*reversed(det.shape), dtype=det.dtype).permute(*reversed(range(det.dim())))
        assert not go.is_contiguous()
        (g1,) = torch.autograd.grad(det, ur, go)
        ur2 = uc.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(_reference.jacobian_determinant(ur2), ur2, go.contiguous())
        torch.testing.assert_close(g1, g2, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("name", ENERGIES + ["jacobian_penalty"])
def test_energies_are_means_over_the_batch(name):
    u = displacement(3, n=2, scale=0.6)
    fn = getattr(ops, name)
    separately = (fn(u[:1]) + fn(u[1:])) / 2
    torch.testing.assert_close(fn(u), separately, atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------- gradcheck / opcheck


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", ENERGIES)
def test_energy_gradcheck(name, ndim):
    shape = (3, 4) if ndim == 2 else (3, 3, 4)
    u = displacement(ndim, shape=shape).requires_grad_(True)
    fn = getattr(ops, name)
    assert gradcheck(lambda v: fn(v), (u,))
    spacing = SPACINGS[ndim][-1]
    assert gradcheck(lambda v: fn(v, spacing), (u,))


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_gradcheck(ndim):
    shape = (3, 4) if ndim == 2 else (3, 3, 4)
    u = displacement(ndim, shape=shape, scale=0.5).requires_grad_(True)
    assert gradcheck(ops.jacobian_determinant, (u,))
    assert (_reference.jacobian_determinant(u.detach()) < 1.2).any()
    assert gradcheck(lambda v: ops.jacobian_penalty(v, 1.2), (u,))
    u2 = (u.detach() * 2.0).requires_grad_(True)
    assert (_reference.jacobian_determinant(u2.detach()) < 0.5).any()
    assert gradcheck(lambda v: ops.jacobian_penalty(v, 0.5), (u2,))


def _opcheck_ok(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("ndim", [2, 3])
def test_regularizers_opcheck(ndim):
    shape = (4, 5) if ndim == 2 else (3, 4, 5)
    u = displacement(ndim, shape=shape, scale=0.5).requires_grad_(True)
    O = torch.ops.itk_odereg
    spacing = list(SPACINGS[ndim][-1])
    _opcheck_ok(O.diffusion_energy.default, (u, None))
    _opcheck_ok(O.diffusion_energy.default, (u, spacing))
    _opcheck_ok(O.bending_energy.default, (u, None))
    _opcheck_ok(O.bending_energy.default, (u, spacing))
    _opcheck_ok(O.jacobian_determinant.default, (u,))
    _opcheck_ok(O.jacobian_penalty.default, (u, 1.2))
    _opcheck_ok(O.jacobian_penalty.default, (u, 0.5))


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize(
    "A",
    [
        [[0.3, -0.7, 0.2], [0.5, 0.1, -0.4], [-0.25, 0.6, 0.35]],
        [[0.4, -1.1], [0.9, -0.3]],
        [[-2.0, 0.5], [0.25, 0.3]],  # a folding map: det(I + A) < 0
    ],
)
def test_jacobian_determinant_of_affine_field_is_exact(A):
    A = torch.tensor(A, dtype=torch.float64)
    ndim = A.shape[0]
    shape = (4, 5, 6) if ndim == 3 else (5, 7)
    u = affine_field(A, torch.linspace(-1, 2, ndim, dtype=torch.float64), shape, n=2)
    expected = torch.linalg.det(torch.eye(ndim, dtype=torch.float64) + A).item()
    det = ops.jacobian_determinant(u)
    # Everywhere, the border (one-sided differences) included.
    torch.testing.assert_close(det, torch.full((2, *shape), expected, dtype=torch.float64), atol=1e-12, rtol=0)
    for tau in (0.5, 1.2, 3.0):
        torch.testing.assert_close(
            ops.jacobian_penalty(u, tau).item(), max(tau - expected, 0.0) ** 2, atol=1e-12, rtol=0
        )


def test_jacobian_determinant_of_random_affine_3d():
    A = torch.randn(3, 3, dtype=torch.float64) * 0.4
    u = affine_field(A, torch.randn(3, dtype=torch.float64), (3, 4, 5), n=1)
    expected = torch.linalg.det(torch.eye(3, dtype=torch.float64) + A)
    torch.testing.assert_close(ops.jacobian_determinant(u), expected.expand(1, 3, 4, 5), atol=1e-12, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffusion_energy_of_affine_field(ndim):
    A = torch.randn(ndim, ndim, dtype=torch.float64)
    shape = SHAPES[ndim]
    u = affine_field(A, torch.randn(ndim, dtype=torch.float64), shape, n=2)
    torch.testing.assert_close(ops.diffusion_energy(u), (A**2).sum(), atol=1e-12, rtol=1e-12)
    # With spacing h: the physical gradient is h_i A_ij / h_j.
    h = torch.tensor(SPACINGS[ndim][-1], dtype=torch.float64)
    expected = ((h[:, None] * A / h[None, :]) ** 2).sum()
    torch.testing.assert_close(ops.diffusion_energy(u, h.tolist()), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_of_affine_field_is_zero(ndim):
    A = torch.randn(ndim, ndim, dtype=torch.float64)
    u = affine_field(A, torch.randn(ndim, dtype=torch.float64), SHAPES[ndim], n=2)
    assert ops.bending_energy(u).item() == pytest.approx(0.0, abs=1e-20)
    assert ops.bending_energy(u, SPACINGS[ndim][-1]).item() == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_of_quadratic_field(ndim):
    """u_i(x) = x^T Q_i x / 2 has Hessian Q_i; the stencils are exact for quadratics, borders included."""
    Q = torch.randn(ndim, ndim, ndim, dtype=torch.float64)
    Q = (Q + Q.transpose(1, 2)) / 2
    shape = SHAPES[ndim]
    x = grid(shape)
    u = 0.5 * torch.einsum("a...,iab,b...->i...", x, Q, x)[None].repeat(2, *([1] * (ndim + 1)))
    torch.testing.assert_close(ops.bending_energy(u), (Q**2).sum(), atol=1e-10, rtol=1e-12)
    h = torch.tensor(SPACINGS[ndim][-1], dtype=torch.float64)
    scaled = h[:, None, None] * Q / (h[None, :, None] * h[None, None, :])
    torch.testing.assert_close(ops.bending_energy(u, h.tolist()), (scaled**2).sum(), atol=1e-10, rtol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_penalty_of_identity(ndim):
    u = torch.zeros(2, ndim, *SHAPES[ndim], dtype=torch.float64)
    assert torch.equal(ops.jacobian_determinant(u), torch.ones(2, *SHAPES[ndim], dtype=torch.float64))
    assert ops.jacobian_penalty(u, 0.5).item() == 0.0
    assert ops.jacobian_penalty(u, 1.0).item() == 0.0
    for tau in (1.2, 2.5):
        assert ops.jacobian_penalty(u, tau).item() == pytest.approx((tau - 1.0) ** 2, abs=1e-15)
    # The gradient vanishes where the penalty is inactive.
    ur = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ops.jacobian_penalty(ur, 0.5), ur)
    assert torch.equal(g, torch.zeros_like(u))
    assert ops.diffusion_energy(u).item() == 0.0 and ops.bending_energy(u).item() == 0.0


def test_spacing_none_equals_unit_spacing():
    u = displacement(3)
    for name in ENERGIES:
        fn = getattr(ops, name)
        assert fn(u).item() == pytest.approx(fn(u, (1.0, 1.0, 1.0)).item(), rel=1e-14)
        assert fn(u, [0.5, 1, 2]).item() != pytest.approx(fn(u).item(), rel=1e-3)
    # A uniform spacing h leaves the (dimensionless) diffusion energy alone and scales bending by 1/h^2.
    assert ops.diffusion_energy(u, [2, 2, 2]).item() == pytest.approx(ops.diffusion_energy(u).item(), rel=1e-12)
    assert ops.bending_energy(u, [2, 2, 2]).item() == pytest.approx(ops.bending_energy(u).item() / 4, rel=1e-12)


@pytest.mark.parametrize("shape", [(2, 3), (2, 7), (3, 3), (2, 2, 3), (3, 3, 3), (3, 2, 4)])
def test_regularizers_on_minimal_sizes(shape):
    """Size 2 (all one-sided differences) and size 3 (one interior sample) against the reference."""
    ndim = len(shape)
    u = displacement(ndim, shape=shape, scale=0.6)
    names = ["diffusion_energy", "jacobian_penalty"] + (["bending_energy"] if min(shape) >= 3 else [])
    for name in names:
        u1 = u.clone().requires_grad_(True)
        out = getattr(ops, name)(u1)
        (g1,) = torch.autograd.grad(out, u1)
        u2 = u.clone().requires_grad_(True)
        ref = getattr(_reference, name)(u2)
        (g2,) = torch.autograd.grad(ref, u2)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(g1, g2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ops.jacobian_determinant(u), _reference.jacobian_determinant(u), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(70, 80), (16, 20, 24), (61, 67), (13, 17, 19)])
def test_regularizers_multithreaded_and_reproducible(shape):
    """Fields larger than one parallel task (2048 voxels): parallel sums and gradients. The CPU
    kernels walk a task's voxels by row segments (csrc/ops/cpu/fd_rows.h); the last two shapes
    put a task boundary inside a row, so a row is split between two tasks."""
    ndim = len(shape)
    u = displacement(ndim, shape=shape, scale=0.5)
    spacing = SPACINGS[ndim][-1]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        for name, args in (("diffusion_energy", (spacing,)), ("bending_energy", (spacing,)),
                           ("jacobian_penalty", (1.2,))):
            u1 = u.clone().requires_grad_(True)
            out = getattr(ops, name)(u1, *args)
            (g1,) = torch.autograd.grad(out, u1)
            u2 = u.clone().requires_grad_(True)
            ref = getattr(_reference, name)(u2, *args)
            (g2,) = torch.autograd.grad(ref, u2)
            torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(g1, g2, atol=1e-12, rtol=1e-12)
            assert getattr(ops, name)(u, *args).item() == out.item()  # bit-reproducible
        det = ops.jacobian_determinant(u)
        torch.testing.assert_close(det, _reference.jacobian_determinant(u), atol=1e-12, rtol=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered:UserWarning")
@pytest.mark.parametrize("name", ["diffusion_energy", "bending_energy", "jacobian_penalty", "jacobian_determinant"])
def test_regularizer_double_backward_fails_loudly(name):
    """Double backward is not implemented for the regularizers. Asking for it must raise,
    not silently drop the regularizer's second-order term (which the reference shows is
    far from negligible)."""
    u = displacement(2, n=1, shape=(4, 5), scale=0.6)
    threshold = (1.2,) if name == "jacobian_penalty" else ()

    def second_order(module):
        v = u.clone().requires_grad_(True)
        out = getattr(module, name)(v, *threshold).sum()
        (g,) = torch.autograd.grad(out, v, create_graph=True)
        loss = (g**2).sum() + (v**2).sum()
        (gg,) = torch.autograd.grad(loss, v)
        return gg

    expected = second_order(_reference)
    assert (expected - 2 * u).abs().max() > 1e-3  # the regularizer's term is not negligible
    with pytest.raises(RuntimeError, match=rf"derivative for itk_odereg::_{name}_backward is not implemented"):
        second_order(ops)
