"""itk_odereg.ops.sample_at (warp from another corner-aligned grid of the box) against
grid_sample, an explicit loop, the same-grid warp and corner-aligned linear upsampling."""
from __future__ import annotations

import itertools
import math
import sys

import pytest
import torch
from conftest import cpu_and_cuda
from torch.autograd import gradcheck

from itk_odereg import ops
from itk_odereg.ops import _reference
from test_ops_warp import _grads

# (image grid, displacement grid): coarser, finer and mixed per axis, as a control grid and a flow grid are.
GRIDS = {2: [((4, 6), (9, 5)), ((7, 3), (7, 8))], 3: [((3, 4, 5), (6, 7, 4)), ((5, 5, 6), (3, 9, 6))]}


def loop_sample(image: torch.Tensor, displacement: torch.Tensor, padding: str) -> torch.Tensor:
    """The docstring formula, one position at a time: index (p + u) * (S' - 1) / (S - 1), multilinear."""
    image = image.detach().double().cpu()
    displacement = displacement.detach().double().cpu()
    n_batch, channels = image.shape[:2]
    image_shape, shape = tuple(image.shape[2:]), tuple(displacement.shape[2:])
    scale = [1.0 if a == b else (a - 1) / (b - 1) for a, b in zip(image_shape, shape)]
    out = torch.zeros(n_batch, channels, *shape, dtype=torch.float64)
    for n in range(n_batch):
        for p in itertools.product(*(range(s) for s in shape)):
            pos = [(p[d] + displacement[(n, d) + p].item()) * scale[d] for d in range(len(shape))]
            if padding == "border":
                pos = [min(max(x, 0.0), image_shape[d] - 1.0) for d, x in enumerate(pos)]
            base = [math.floor(x) for x in pos]
            for corner in itertools.product((0, 1), repeat=len(shape)):
                idx = tuple(b + c for b, c in zip(base, corner))
                if any(i < 0 or i >= s for i, s in zip(idx, image_shape)):
                    continue
                weight = math.prod(x - b if c else 1.0 - (x - b) for x, b, c in zip(pos, base, corner))
                for ch in range(channels):
                    out[(n, ch) + p] += weight * image[(n, ch) + idx].item()
    return out


def make_inputs(image_shape, shape, dtype, device="cpu", n=2, c=3, scale=1.5):
    image = torch.randn(n, c, *image_shape, dtype=dtype, device=device)
    displacement = torch.randn(n, len(shape), *shape, dtype=dtype, device=device) * scale
    return image, displacement


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_at_matches_grid_sample_reference(ndim, padding, dtype, device):
    for image_shape, shape in GRIDS[ndim]:
        image, displacement = make_inputs(image_shape, shape, dtype, device, scale=3.0)
        out = ops.sample_at(image, displacement, padding)
        assert out.shape == (2, 3, *shape)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(out, _reference.sample_at(image, displacement, padding), atol=tol, rtol=tol)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_at_matches_explicit_loop(ndim, padding):
    for image_shape, shape in GRIDS[ndim]:
        image, displacement = make_inputs(image_shape, shape, torch.float64, n=1, c=2, scale=2.0)
        torch.testing.assert_close(ops.sample_at(image, displacement, padding),
                                   loop_sample(image, displacement, padding), atol=1e-10, rtol=0)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_sample_at_with_a_single_sample_axis_on_both_grids(padding, monkeypatch):
    """A size-1 axis (equal on both grids, as a 2D slice stored in 3D) next to axes of other sizes:
    the kernel, the pure-PyTorch fallback and the explicit loop agree."""
    image, displacement = make_inputs((1, 4, 6), (1, 7, 3), torch.float64, n=1, c=2, scale=1.5)
    out = ops.sample_at(image, displacement, padding)
    torch.testing.assert_close(out, loop_sample(image, displacement, padding), atol=1e-10, rtol=0)
    monkeypatch.setattr(sys.modules["itk_odereg.ops.warp"], "_HAS_OPS", False)
    torch.testing.assert_close(ops.sample_at(image, displacement, padding), out, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_sample_at_on_the_same_grid_is_warp_bit_for_bit(padding, dtype):
    image, displacement = make_inputs((6, 7, 8), (6, 7, 8), dtype, scale=2.0)
    assert torch.equal(ops.sample_at(image, displacement, padding), ops.warp(image, displacement, padding))
    grad_output = torch.randn_like(image)
    _, grads = _grads(lambda i, u: ops.sample_at(i, u, padding), (image, displacement), grad_output)
    _, expected = _grads(lambda i, u: ops.warp(i, u, padding), (image, displacement), grad_output)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected))


def test_sample_at_zero_displacement_is_corner_aligned_upsampling():
    """At the grid points the samples are the field's linear resampling to that grid: the velocity
    network's ``forward`` and ``control_field`` + ``sample_at`` define the same field."""
    field = torch.randn(1, 3, 5, 6, 7, dtype=torch.float64)
    for shape in ((9, 11, 13), (3, 6, 10)):
        zero = torch.zeros(1, 3, *shape, dtype=torch.float64)
        torch.testing.assert_close(ops.sample_at(field, zero, "border"), ops.resample_linear(field, shape),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_at_gradients_match_reference(ndim, padding, device):
    for image_shape, shape in GRIDS[ndim]:
        image, displacement = make_inputs(image_shape, shape, torch.float64, device, scale=2.0)
        grad_output = torch.randn(2, 3, *shape, dtype=torch.float64, device=device)
        out, (gi, gu) = _grads(lambda i, u: ops.sample_at(i, u, padding), (image, displacement), grad_output)
        ref, (ri, ru) = _grads(lambda i, u: _reference.sample_at(i, u, padding), (image, displacement), grad_output)
        torch.testing.assert_close(gi, ri, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(gu, ru, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_at_gradcheck(ndim, padding):
    torch.manual_seed(4)
    image_shape, shape = ((3, 5), (6, 4)) if ndim == 2 else ((3, 4, 3), (5, 3, 4))
    image = torch.randn(2, 2, *image_shape, dtype=torch.float64, requires_grad=True)
    displacement = (torch.randn(2, ndim, *shape, dtype=torch.float64) * 1.5).requires_grad_(True)
    assert gradcheck(lambda i, u: ops.sample_at(i, u, padding), (image, displacement), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_sample_at_opcheck(padding):
    image, displacement = make_inputs((3, 4, 5), (6, 7, 4), torch.float64)
    image.requires_grad_(True)
    displacement.requires_grad_(True)
    for args in ((image, displacement, padding), (image.detach(), displacement, padding)):
        result = torch.library.opcheck(torch.ops.itk_odereg.sample_at.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_sample_at_gradients_multithreaded_and_deterministic():
    """Many more positions than image voxels (a control grid sampled at a fine grid's particles):
    the per-thread image-gradient buffers are the small grid's, summed in a fixed order."""
    image = torch.randn(1, 3, 6, 7, 5, dtype=torch.float64)
    displacement = torch.randn(1, 3, 30, 32, 28, dtype=torch.float64) * 2
    grad_output = torch.randn(1, 3, 30, 32, 28, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        _, first = _grads(lambda i, u: ops.sample_at(i, u, "border"), (image, displacement), grad_output)
        _, second = _grads(lambda i, u: ops.sample_at(i, u, "border"), (image, displacement), grad_output)
    finally:
        torch.set_num_threads(threads)
    _, expected = _grads(lambda i, u: _reference.sample_at(i, u, "border"), (image, displacement), grad_output)
    for got, again, ref in zip(first, second, expected):
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-10)
        assert torch.equal(got, again)


def test_sample_at_backward_op_skips_unrequested_gradients():
    image, displacement = make_inputs((4, 5), (7, 3), torch.float64)
    grad_output = torch.randn(2, 3, 7, 3, dtype=torch.float64)
    backward = torch.ops.itk_odereg._sample_at_backward.default
    gi, gu = backward(grad_output, image, displacement, "zeros", True, False)
    assert gi.shape == image.shape and gu.numel() == 0
    gi2, gu2 = backward(grad_output, image, displacement, "zeros", False, True)
    assert gi2.numel() == 0 and gu2.shape == displacement.shape


@pytest.mark.parametrize("image_shape,shape,match", [
    ((1, 5, 5), (4, 5, 5), "spatial dim 0 .* must be equal, or both at least 2"),
    ((4, 5, 5), (4, 1, 5), "spatial dim 1 .* must be equal, or both at least 2"),
])
def test_sample_at_refuses_a_single_sample_axis_against_a_longer_one(image_shape, shape, match):
    image, displacement = make_inputs(image_shape, shape, torch.float32)
    with pytest.raises(RuntimeError, match=match):
        ops.sample_at(image, displacement)


def test_sample_at_refuses_other_batch_sizes_and_ranks():
    image = torch.randn(2, 1, 4, 5, 6)
    with pytest.raises(RuntimeError, match="same batch size"):
        ops.sample_at(image, torch.zeros(1, 3, 7, 8, 9))
    with pytest.raises(RuntimeError, match="spatial dims to match"):
        ops.sample_at(torch.randn(2, 1, 4, 5), torch.zeros(2, 3, 7, 8, 9))
