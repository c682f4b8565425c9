"""itk_odereg.ops.warp / compose against grid_sample and an explicit-loop interpolator."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import cpu_and_cuda
from torch.autograd import gradcheck

from itk_odereg import ops
from itk_odereg.ops import _reference

ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}
SHAPES = {2: (5, 6), 3: (3, 4, 5)}


def loop_warp(image: torch.Tensor, displacement: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Slow, explicit multilinear interpolation of image at p + u(p) (the docstring formula).

    Zero padding: corners outside the image contribute 0. Border padding: the
    position is clamped to [0, size - 1] per axis first.
    """
    image = image.detach().double().cpu()
    displacement = displacement.detach().double().cpu()
    n_batch, channels = image.shape[:2]
    shape = tuple(image.shape[2:])
    ndim = len(shape)
    out = torch.zeros(image.shape, dtype=torch.float64)
    for n in range(n_batch):
        for p in itertools.product(*(range(s) for s in shape)):
            pos = [p[d] + displacement[(n, d) + p].item() for d in range(ndim)]
            if padding == "border":
                pos = [min(max(x, 0.0), shape[d] - 1.0) for d, x in enumerate(pos)]
            base = [math.floor(x) for x in pos]
            frac = [x - b for x, b in zip(pos, base)]
            for corner in itertools.product((0, 1), repeat=ndim):
                idx = tuple(b + c for b, c in zip(base, corner))
                if any(i < 0 or i >= s for i, s in zip(idx, shape)):
                    continue
                weight = 1.0
                for c, f in zip(corner, frac):
                    weight *= f if c else 1.0 - f
                for ch in range(channels):
                    out[(n, ch) + p] += weight * image[(n, ch) + idx].item()
    return out


def make_inputs(ndim, n, c, dtype, device="cpu", scale=None):
    shape = SHAPES[ndim]
    image = torch.randn(n, c, *shape, dtype=dtype, device=device)
    # Large enough that many sample positions leave the image on every side.
    scale = max(shape) * 0.6 if scale is None else scale
    displacement = torch.randn(n, ndim, *shape, dtype=dtype, device=device) * scale
    return image, displacement


def _any_outside(displacement):
    shape = displacement.shape[2:]
    grid = _reference.identity_grid(shape, displacement.dtype, displacement.device)
    pos = grid + displacement
    limits = torch.tensor(shape, dtype=pos.dtype, device=pos.device).view(1, -1, *([1] * len(shape)))
    return bool(((pos < 0) | (pos > limits - 1)).any())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("n,c", [(1, 1), (2, 3)])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_matches_grid_sample_reference(ndim, n, c, padding, dtype, device):
    image, displacement = make_inputs(ndim, n, c, dtype, device)
    assert _any_outside(displacement)
    out = ops.warp(image, displacement, padding)
    expected = _reference.warp(image, displacement, padding)
    assert out.shape == image.shape and out.dtype == dtype and out.device == image.device
    torch.testing.assert_close(out, expected, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("n,c", [(1, 1), (2, 3)])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_matches_explicit_loop(ndim, n, c, padding, dtype):
    image, displacement = make_inputs(ndim, n, c, dtype)
    assert _any_outside(displacement)
    out = ops.warp(image, displacement, padding)
    expected = loop_warp(image, displacement, padding).to(dtype)
    torch.testing.assert_close(out, expected, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_size_one_axis_follows_formula(padding):
    """A size-1 axis: zero padding interpolates towards the 0 outside, border clamps."""
    image = torch.randn(2, 2, 1, 5, dtype=torch.float64)
    displacement = torch.randn(2, 2, 1, 5, dtype=torch.float64) * 0.4
    out = ops.warp(image, displacement, padding)
    torch.testing.assert_close(out, loop_warp(image, displacement, padding), atol=1e-12, rtol=0)


def test_reference_warp_size_one_axis_agrees_with_kernel():
    """The pure-PyTorch fallback (_reference.warp) must give the kernel's results.

    KNOWN DISCREPANCY: with zero padding on a size-1 axis the reference maps every
    sample to index 0 (grid_sample cannot express a size-1 extent), while the
    kernel and the documented formula interpolate towards the zero outside. The
    fallback used when _C is missing therefore gives different results.
    """
    image = torch.ones(1, 1, 1, 4, dtype=torch.float64)
    displacement = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    displacement[:, 0] = 0.25  # a quarter voxel along the size-1 axis
    kernel = ops.warp(image, displacement, "zeros")
    torch.testing.assert_close(kernel, torch.full_like(image, 0.75))
    torch.testing.assert_close(_reference.warp(image, displacement, "zeros"), kernel)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_non_contiguous_inputs(ndim, padding):
    shape = SHAPES[ndim]
    dtype = torch.float64
    # Channels-last storage seen through a permuted view.
    image = torch.randn(2, *shape, 3, dtype=dtype).movedim(-1, 1)
    displacement = (torch.randn(2, *shape, ndim, dtype=dtype) * 2).movedim(-1, 1)
    assert not image.is_contiguous() and not displacement.is_contiguous()
    expected = _reference.warp(image.contiguous(), displacement.contiguous(), padding)
    torch.testing.assert_close(ops.warp(image, displacement, padding), expected, atol=1e-10, rtol=0)

    # Strided views (every other voxel of a larger tensor) and a batch-expanded image.
    big_image = torch.randn(2, 3, *[2 * s for s in shape], dtype=dtype)
    big_disp = torch.randn(2, ndim, *[2 * s for s in shape], dtype=dtype) * 2
    sl = (slice(None), slice(None)) + tuple(slice(None, None, 2) for _ in shape)
    image, displacement = big_image[sl], big_disp[sl]
    assert not image.is_contiguous()
    expected = _reference.warp(image.contiguous(), displacement.contiguous(), padding)
    torch.testing.assert_close(ops.warp(image, displacement, padding), expected, atol=1e-10, rtol=0)

    expanded = torch.randn(1, 3, *shape, dtype=dtype).expand(2, -1, *shape)
    expected = _reference.warp(expanded.contiguous(), displacement.contiguous(), padding)
    torch.testing.assert_close(ops.warp(expanded, displacement, padding), expected, atol=1e-10, rtol=0)


def _grads(fn, inputs, grad_output):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, grad_output)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_gradients_match_reference(ndim, padding, dtype, device):
    image, displacement = make_inputs(ndim, 2, 3, dtype, device, scale=2.0)
    grad_output = torch.randn_like(image)
    out, (gi, gu) = _grads(lambda i, u: ops.warp(i, u, padding), (image, displacement), grad_output)
    ref, (ri, ru) = _grads(lambda i, u: _reference.warp(i, u, padding), (image, displacement), grad_output)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(gi, ri, **tol)
    torch.testing.assert_close(gu, ru, **tol)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_gradients_multithreaded_and_deterministic(padding):
    """Large enough (> one 4096-voxel task per thread) to use the per-thread image-gradient buffers."""
    image = torch.randn(2, 2, 72, 80, dtype=torch.float64)
    displacement = torch.randn(2, 2, 72, 80, dtype=torch.float64) * 3
    grad_output = torch.randn_like(image)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        _, (gi, gu) = _grads(lambda i, u: ops.warp(i, u, padding), (image, displacement), grad_output)
        _, (gi2, gu2) = _grads(lambda i, u: ops.warp(i, u, padding), (image, displacement), grad_output)
    finally:
        torch.set_num_threads(threads)
    _, (ri, ru) = _grads(lambda i, u: _reference.warp(i, u, padding), (image, displacement), grad_output)
    torch.testing.assert_close(gi, ri, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gu, ru, atol=1e-10, rtol=1e-10)
    assert torch.equal(gi, gi2) and torch.equal(gu, gu2)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_gradients_at_integer_and_half_integer_positions(ndim, padding):
    """Sample positions on the cell boundaries, the image edges and exactly one voxel outside.

    There the map is not differentiable; grid_sample (which the docstring says warp
    matches) takes the one-sided derivative from the cell that floor() picks. The
    kernel must do the same everywhere, including at the position -1.
    """
    shape = SHAPES[ndim]
    image = torch.randn(2, 2, *shape, dtype=torch.float64)
    displacement = (torch.randint(-2 * max(shape), 2 * max(shape) + 1, (2, ndim, *shape)) / 2).double()
    grad_output = torch.randn_like(image)
    out, (gi, gu) = _grads(lambda i, u: ops.warp(i, u, padding), (image, displacement), grad_output)
    ref, (ri, ru) = _grads(lambda i, u: _reference.warp(i, u, padding), (image, displacement), grad_output)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(gi, ri, atol=1e-12, rtol=0)
    torch.testing.assert_close(gu, ru, atol=1e-12, rtol=0)


def test_warp_displacement_gradient_at_minus_one():
    """Minimal case of the above: zero padding, a sample exactly at x = -1.

    Just inside (-1 < x < 0) the output is (x + 1) * image[0], so the right-hand
    derivative is image[0]; grid_sample(align_corners=True) returns it, as the kernel
    does at every other integer position (x = 0, ..., size - 1).
    """
    image = torch.arange(1.0, 6.0, dtype=torch.float64).view(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    for x, expected in ((-1.0, 1.0), (-0.5, 1.0), (0.0, 1.0), (4.0, -5.0), (5.0, 0.0), (-2.0, 0.0)):
        displacement = torch.zeros(1, 2, 3, 5, dtype=torch.float64)
        displacement[:, 1, :, 0] = x  # column 0 samples at x
        displacement.requires_grad_(True)
        (grad,) = torch.autograd.grad(ops.warp(image, displacement, "zeros").sum(), displacement)
        ref_disp = displacement.detach().clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(_reference.warp(image, ref_disp, "zeros").sum(), ref_disp)
        assert ref[0, 1, 0, 0].item() == expected
        assert grad[0, 1, 0, 0].item() == expected, f"d out / d u_x at x = {x}"


@pytest.mark.parametrize("seed_value", [0, 1, 2])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_gradcheck(ndim, padding, seed_value):
    torch.manual_seed(seed_value)
    shape = (4, 5) if ndim == 2 else (3, 3, 4)
    image = torch.randn(2, 2, *shape, dtype=torch.float64, requires_grad=True)
    displacement = (torch.randn(2, ndim, *shape, dtype=torch.float64) * 1.5).requires_grad_(True)
    assert gradcheck(lambda i, u: ops.warp(i, u, padding), (image, displacement), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_gradient_of_one_input_only(ndim):
    image, displacement = make_inputs(ndim, 2, 2, torch.float64, scale=1.5)
    grad_output = torch.randn_like(image)
    _, (ri, ru) = _grads(lambda i, u: _reference.warp(i, u), (image, displacement), grad_output)

    img = image.clone().requires_grad_(True)
    out = ops.warp(img, displacement)
    (gi,) = torch.autograd.grad(out, img, grad_output)
    torch.testing.assert_close(gi, ri, atol=1e-10, rtol=0)

    disp = displacement.clone().requires_grad_(True)
    out = ops.warp(image, disp)
    (gu,) = torch.autograd.grad(out, disp, grad_output)
    torch.testing.assert_close(gu, ru, atol=1e-10, rtol=0)

    assert gradcheck(lambda i: ops.warp(i, displacement), (image.clone().requires_grad_(True),))
    assert gradcheck(lambda u: ops.warp(image, u), (displacement.clone().requires_grad_(True),))


def test_warp_backward_op_skips_unrequested_gradients():
    image, displacement = make_inputs(2, 1, 2, torch.float64, scale=1.0)
    grad_output = torch.randn_like(image)
    backward = torch.ops.itk_odereg._warp_backward.default
    gi, gu = backward(grad_output, image, displacement, "zeros", True, False)
    assert gi.shape == image.shape and gu.numel() == 0
    gi2, gu2 = backward(grad_output, image, displacement, "zeros", False, True)
    assert gi2.numel() == 0 and gu2.shape == displacement.shape
    _, (ri, ru) = _grads(lambda i, u: _reference.warp(i, u), (image, displacement), grad_output)
    torch.testing.assert_close(gi, ri, atol=1e-12, rtol=0)
    torch.testing.assert_close(gu2, ru, atol=1e-12, rtol=0)


def test_warp_double_backward_fails_loudly():
    image, displacement = make_inputs(2, 1, 1, torch.float64, scale=1.0)
    image.requires_grad_(True)
    displacement.requires_grad_(True)
    out = ops.warp(image, displacement)
    (gu,) = torch.autograd.grad(out.sum(), displacement, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for itk_odereg::_warp_backward is not implemented"):
        gu.sum().backward()


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_opcheck(ndim, padding):
    image, displacement = make_inputs(ndim, 2, 2, torch.float64, scale=1.5)
    image.requires_grad_(True)
    displacement.requires_grad_(True)
    result = torch.library.opcheck(torch.ops.itk_odereg.warp.default, (image, displacement, padding))
    assert all(v == "SUCCESS" for v in result.values()), result
    result = torch.library.opcheck(torch.ops.itk_odereg.warp.default, (image.detach(), displacement, padding))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_warp_default_padding_is_zeros():
    image, displacement = make_inputs(2, 1, 1, torch.float64)
    zeros = ops.warp(image, displacement, "zeros")
    assert torch.equal(ops.warp(image, displacement), zeros)
    assert torch.equal(torch.ops.itk_odereg.warp(image, displacement), zeros)
    assert not torch.equal(ops.warp(image, displacement, "border"), zeros)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_zero_displacement_is_exact_identity(ndim, padding, dtype):
    image = torch.randn(2, 3, *SHAPES[ndim], dtype=dtype)
    out = ops.warp(image, torch.zeros(2, ndim, *SHAPES[ndim], dtype=dtype), padding)
    assert torch.equal(out, image)


@pytest.mark.parametrize("shift", [1, -2])
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_integer_translation_shifts_exactly(ndim, shift):
    shape = SHAPES[ndim]
    image = torch.randn(2, 2, *shape, dtype=torch.float32)
    for axis in range(ndim):
        displacement = torch.zeros(2, ndim, *shape, dtype=torch.float32)
        displacement[:, axis] = shift
        size = shape[axis]
        dim = axis + 2
        index = torch.arange(size) + shift  # out[p] = image[p + shift]
        inside = (index >= 0) & (index < size)

        out = ops.warp(image, displacement, "zeros")
        expected = torch.zeros_like(image)
        expected.index_copy_(dim, torch.nonzero(inside).flatten(), image.index_select(dim, index[inside]))
        assert torch.equal(out, expected)

        out = ops.warp(image, displacement, "border")
        expected = image.index_select(dim, index.clamp(0, size - 1))
        assert torch.equal(out, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_matches_definition(ndim):
    shape = SHAPES[ndim]
    u = torch.randn(2, ndim, *shape, dtype=torch.float64) * 1.5
    v = torch.randn(2, ndim, *shape, dtype=torch.float64) * 1.5
    expected = v + _reference.warp(u, v, "zeros")
    torch.testing.assert_close(ops.compose(u, v), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(ops.compose(u, v), v + loop_warp(u, v, "zeros"), atol=1e-10, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_with_zero_is_identity(ndim):
    shape = SHAPES[ndim]
    u = torch.randn(2, ndim, *shape, dtype=torch.float64)
    zero = torch.zeros_like(u)
    assert torch.equal(ops.compose(u, zero), u)
    assert torch.equal(ops.compose(zero, u), u)


def test_compose_of_translations_adds_them():
    shape = (6, 7)
    u = torch.zeros(1, 2, *shape, dtype=torch.float64)
    v = torch.zeros(1, 2, *shape, dtype=torch.float64)
    u[:, 1] = 1.0  # +1 along x, applied second
    v[:, 0] = -1.0  # -1 along y, applied first
    w = ops.compose(u, v)
    # Where p + v(p) stays inside (y >= 1) the composition is the sum of the translations.
    torch.testing.assert_close(w[:, 0], torch.full((1, *shape), -1.0, dtype=torch.float64))
    torch.testing.assert_close(w[:, 1, 1:], torch.ones(1, shape[0] - 1, shape[1], dtype=torch.float64))
    # At y = 0, p + v(p) leaves the grid: u counts as 0 there (zero padding).
    assert torch.equal(w[:, 1, 0], torch.zeros(1, shape[1], dtype=torch.float64))
