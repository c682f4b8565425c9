"""The numeric primitives of the core layer reproduce, bit for bit, the formulas they replaced.

Each test compares a variant of :mod:`itk_odereg.core.differences`, :mod:`itk_odereg.core.moments`
or :func:`itk_odereg.core.separable.gaussian_kernel` with ``torch.equal`` against an inline copy of
the code its call site had before (``losses/ngf.py``, ``msodenet/_features.py``,
``msodenet/_rigid_search.py``, ``msodenet/data.py``, ``msodenet/_velocity.py``,
``core/separable.py``, ``registration/affine.py``), and checks that the functions compile with
``torch.jit.script`` (the MS-ODENet modules calling them are exported as TorchScript).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itk_odereg.core.differences import (central_differences, image_gradient, normalized_gradient,
                                         one_sided_differences_adjoint)
from itk_odereg.core.moments import weighted_centroid
from itk_odereg.core.separable import _gaussian_matrix64, gaussian_kernel


# ----------------------------------------------------------------------------------------------
# The replaced code, verbatim
# ----------------------------------------------------------------------------------------------

def _old_spatial_gradient(x, nd, spacing):  # losses/ngf.py
    dims = tuple(range(2, 2 + nd))
    sizes_ok = [x.shape[d] >= 2 for d in dims]
    grads = []
    for k, d in enumerate(dims):
        if not sizes_ok[k]:
            grads.append(torch.zeros_like(x))
            continue
        h = 1.0 if spacing is None else spacing[k]
        grads.append(torch.gradient(x, spacing=h, dim=d, edge_order=1)[0])
    return grads


def _old_central_gradient(image):  # msodenet/_features.py
    padded = F.pad(image, (1, 1, 1, 1, 1, 1), mode="replicate")
    d0 = padded[:, :, 2:, 1:-1, 1:-1] - padded[:, :, :-2, 1:-1, 1:-1]
    d1 = padded[:, :, 1:-1, 2:, 1:-1] - padded[:, :, 1:-1, :-2, 1:-1]
    d2 = padded[:, :, 1:-1, 1:-1, 2:] - padded[:, :, 1:-1, 1:-1, :-2]
    return 0.5 * torch.cat([d0, d1, d2], 1)


def _old_normalized_gradient(image, edge_epsilon=0.05):  # msodenet/_features.py
    g = _old_central_gradient(image)
    return g / torch.sqrt(g.square().sum(1, keepdim=True) + edge_epsilon**2)


def _old_gaussian_kernel(sigma, radius):  # msodenet/_velocity.py
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _old_gaussian_matrix64(size, sigma):  # core/separable.py
    x = torch.arange(size, dtype=torch.float64)
    exponent = 0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2
    weights = torch.where(exponent < 27.6, torch.exp(-exponent), torch.zeros_like(exponent))
    return weights / weights.sum(1, keepdim=True)


def _old_head_centroid(mask, points):  # msodenet/_rigid_search.py (_head_cues)
    weight = mask.reshape(-1)
    return (points * weight).sum(1) / weight.sum().clamp_min(1.0)


def _old_center_of_mass_index(w):  # registration/affine.py (center_of_mass, before the index-to-world map)
    axes = [torch.arange(s, dtype=w.dtype, device=w.device) for s in w.shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    total = w.sum()
    return torch.stack([(g * w).sum() / total for g in grids])


def _new_center_of_mass_index(w):  # the proposed replacement in registration/affine.py
    axes = [torch.arange(s, dtype=w.dtype, device=w.device) for s in w.shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return weighted_centroid(torch.stack(grids).reshape(len(grids), -1), w.reshape(-1), reduction="per_axis")


def _smooth_random(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    nd = len(shape) - 2
    if min(shape[2:]) >= 3 and nd in (2, 3):
        x = F.avg_pool3d(x, 3, 1, 1) if nd == 3 else F.avg_pool2d(x, 3, 1, 1)
    return (x * 3.7 - 1.1).to(dtype)


@pytest.fixture(autouse=True)
def _two_threads():
    # Several threads: the full reductions then run in two passes, where summation order shows.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 9, 7, 11), (1, 1, 1, 6, 5), (3, 2, 13, 8), (1, 2, 1, 9), (2, 1, 17)])
@pytest.mark.parametrize("spacing", [None, "aniso"])
def test_one_sided_equals_the_ngf_loss_gradient(dtype, shape, spacing):
    nd = len(shape) - 2
    sp = None if spacing is None else [1.5, 0.7, 2.25][:nd]
    x = _smooth_random(shape, dtype, 1).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    new = central_differences(x, sp, "one_sided")
    old = _old_spatial_gradient(y, nd, sp)
    assert len(new) == len(old) == nd
    for a, b in zip(new, old):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # The loss is differentiated through them: the backward must match too.
    weights = [torch.rand(shape, generator=torch.Generator().manual_seed(k), dtype=dtype) for k in range(nd)]
    sum(w * a for w, a in zip(weights, new)).sum().backward()
    sum(w * b for w, b in zip(weights, old)).sum().backward()
    assert torch.equal(x.grad, y.grad)
    # Without autograd the differences are written into preallocated outputs: the same bits.
    with torch.no_grad():
        fast = central_differences(x, sp, "one_sided")
    for a, b in zip(fast, old):
        assert not a.requires_grad and torch.equal(a, b.detach())
    # The hand-written adjoint (the NGF loss's backward) is the transpose autograd computes.
    adjoint = one_sided_differences_adjoint(weights, sp)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(adjoint, y.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(1, 1, 2, 3, 4), (1, 1, 1, 5, 3), (2, 1, 4, 2)])
def test_one_sided_adjoint_is_the_transpose(shape):
    """<G, D x> = <D^T G, x> for every x and G, faces and axes of one or two samples included."""
    nd = len(shape) - 2
    sp = [1.5, 0.7, 2.25][:nd]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    weights = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(nd)]
    before = [w.clone() for w in weights]
    lhs = sum((w * d).sum() for w, d in zip(weights, central_differences(x, sp, "one_sided")))
    rhs = (one_sided_differences_adjoint(weights, sp) * x).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * max(1.0, abs(float(lhs)))
    assert all(torch.equal(a, b) for a, b in zip(weights, before))   # inputs untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 12, 9, 10), (1, 1, 1, 5, 4), (1, 1, 48, 48, 48)])
def test_replicate_half_equals_the_msodenet_central_gradient(dtype, shape):
    x = _smooth_random(shape, dtype, 2)
    old = _old_central_gradient(x)
    assert torch.equal(image_gradient(x, None, "replicate_half"), old)
    assert torch.equal(torch.cat(central_differences(x, None, "replicate_half"), 1), old)
    from itk_odereg.msodenet._features import _central_gradient

    assert torch.equal(_central_gradient(x), old)


@pytest.mark.parametrize("epsilon", [0.05, 0.2])
def test_normalized_gradient_equals_the_msodenet_one(epsilon):
    from itk_odereg.msodenet._features import _normalized_gradient

    x = _smooth_random((1, 1, 15, 11, 13), torch.float32, 3).clamp(0, 1)
    old = _old_normalized_gradient(x, epsilon)
    assert torch.equal(normalized_gradient(x, epsilon, None, "replicate_half"), old)
    assert torch.equal(_normalized_gradient(x, epsilon), old)
    if epsilon == 0.05:
        assert torch.equal(_normalized_gradient(x), old)


def test_replicate_half_in_2d_and_with_spacing():
    x = _smooth_random((1, 1, 9, 8), torch.float64, 4)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    d0 = 0.5 * (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1])
    d1 = 0.5 * (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2])
    g = central_differences(x, None, "replicate_half")
    assert torch.equal(g[0], d0) and torch.equal(g[1], d1)
    g = central_differences(x, [2.0, 0.5], "replicate_half")
    assert torch.equal(g[0], d0 / 2.0) and torch.equal(g[1], d1 / 0.5)
    # inside, both boundaries are the same central difference
    one_sided = central_differences(x, None, "one_sided")
    assert torch.allclose(one_sided[0][:, :, 1:-1], d0[:, :, 1:-1], rtol=0, atol=1e-15)


def test_differences_reject_bad_options():
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match='invalid boundary "edge"'):
        central_differences(x, None, "edge")
    with pytest.raises(ValueError, match="'spacing' has 2 entries for 3 spatial axes"):
        central_differences(x, [1.0, 1.0])
    with pytest.raises(ValueError, match="one channel"):
        image_gradient(torch.zeros(1, 2, 4, 4, 4))


# ----------------------------------------------------------------------------------------------
# Centroids
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 12, 10, 9), (1, 1, 48, 48, 48), (1, 1, 64, 40, 56)])
def test_rows_centroid_equals_the_rigid_search_one(shape):
    from itk_odereg.msodenet._geometry import _centred_points
    from itk_odereg.msodenet._rigid_search import _foreground, _head_cues

    image = _smooth_random(shape, torch.float32, 5).clamp_min(0)
    points = _centred_points(list(shape[2:]), [2 * s - 1 for s in shape[2:]], image)
    mask = _foreground(image)
    old = _old_head_centroid(mask, points)
    assert torch.equal(weighted_centroid(points, mask.reshape(-1), 1.0, "rows"), old)
    assert torch.equal(_head_cues(image, points)[1], old)
    # empty mask: 0, not NaN (the floor of the total)
    assert torch.equal(weighted_centroid(points, torch.zeros_like(mask).reshape(-1), 1.0), torch.zeros(3))


@pytest.mark.parametrize("shape", [(11, 9, 10), (48, 48, 48), (64, 40, 56), (30, 41)])
def test_per_axis_centroid_equals_the_affine_centre_of_mass(shape):
    image = _smooth_random((1, 1) + shape, torch.float64, 6)
    # registration/affine.py's weights: intensities above a tenth of the maximum, shifted to >= 0
    w = image[0, 0] - image.min()
    w = torch.where(w > 0.1 * w.max(), w, torch.zeros_like(w))
    assert torch.equal(_new_center_of_mass_index(w), _old_center_of_mass_index(w))


def test_the_two_reductions_are_different_roundings():
    # Why "per_axis" exists: with threads, one full reduction per axis and one row reduction of
    # [d, N] sum in different orders. Equal up to rounding, not bit for bit.
    g = torch.Generator().manual_seed(0)
    differ = 0
    for _ in range(5):
        w = torch.rand(64 ** 3, generator=g, dtype=torch.float64)
        points = torch.randn(3, 64 ** 3, generator=g, dtype=torch.float64)
        rows = weighted_centroid(points, w, reduction="rows")
        per_axis = weighted_centroid(points, w, reduction="per_axis")
        assert torch.allclose(rows, per_axis, rtol=1e-12, atol=1e-14)
        differ += int(not torch.equal(rows, per_axis))
    if torch.get_num_threads() > 1:
        assert differ > 0


@pytest.mark.parametrize("shape", [(9, 11, 7), (40, 48, 36)])
def test_mask_centroid_equals_numpy_mean_of_argwhere(shape):
    from itk_odereg.msodenet.data import _centroid_index

    rng = np.random.default_rng(7)
    mask = rng.random(shape) > 0.4
    old = np.argwhere(mask).mean(0)[::-1]
    new = _centroid_index(mask)
    assert new.dtype == old.dtype and np.array_equal(new, old)


def test_centroid_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match='invalid reduction "mean"'):
        weighted_centroid(torch.zeros(3, 4), torch.ones(4), reduction="mean")


# ----------------------------------------------------------------------------------------------
# Gaussian kernel
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.3, 1.5, 2.0, 2.5, 3.7])
def test_gaussian_kernel_equals_the_dense_velocity_one(sigma):
    import math

    from itk_odereg.msodenet._velocity import DenseVelocity

    for radius in (0, 1, 3, int(math.ceil(2.0 * sigma)), 12):
        old = _old_gaussian_kernel(sigma, radius)
        new = gaussian_kernel(sigma, radius)
        assert new.dtype == torch.float32 and torch.equal(new, old)
    assert torch.equal(DenseVelocity(sigma=sigma).kernel, _old_gaussian_kernel(sigma, int(math.ceil(2.0 * sigma))))


@pytest.mark.parametrize("size", [1, 2, 5, 17, 64, 97])
@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.0, 2.5, 6.0, 40.0])
def test_gaussian_matrix_is_unchanged(size, sigma):
    _gaussian_matrix64.cache_clear()
    assert torch.equal(_gaussian_matrix64(size, sigma), _old_gaussian_matrix64(size, sigma))


# ----------------------------------------------------------------------------------------------
# TorchScript
# ----------------------------------------------------------------------------------------------

_SCRIPT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@_SCRIPT_DEPRECATED
def test_the_primitives_script_and_match_eager():
    x = _smooth_random((1, 1, 10, 9, 8), torch.float32, 8)
    for boundary in ("one_sided", "replicate_half"):
        for spacing in (None, [1.0, 2.0, 0.5]):
            eager = central_differences(x, spacing, boundary)
            scripted = torch.jit.script(central_differences)(x, spacing, boundary)
            assert all(torch.equal(a, b) for a, b in zip(eager, scripted))
            assert torch.equal(torch.jit.script(image_gradient)(x, spacing, boundary),
                               image_gradient(x, spacing, boundary))
            assert torch.equal(torch.jit.script(normalized_gradient)(x, 0.05, spacing, boundary),
                               normalized_gradient(x, 0.05, spacing, boundary))
    points, w = torch.randn(3, 50), torch.rand(50)
    for reduction in ("rows", "per_axis"):
        assert torch.equal(torch.jit.script(weighted_centroid)(points, w, 1.0, reduction),
                           weighted_centroid(points, w, 1.0, reduction))
    assert torch.equal(torch.jit.script(gaussian_kernel)(1.5, 3, torch.float32, True, None), gaussian_kernel(1.5, 3))
    with pytest.raises(torch.jit.Error, match="invalid boundary"):
        torch.jit.script(central_differences)(x, None, "edge")
    weights = central_differences(x, [1.0, 2.0, 0.5], "one_sided")
    assert torch.equal(torch.jit.script(one_sided_differences_adjoint)(weights, [1.0, 2.0, 0.5]),
                       one_sided_differences_adjoint(weights, [1.0, 2.0, 0.5]))


@_SCRIPT_DEPRECATED
def test_the_msodenet_callers_script():
    from itk_odereg.msodenet._features import fixed_image_cues, registration_features
    from itk_odereg.msodenet._rigid_search import _head_cues

    fixed = _smooth_random((1, 1, 12, 10, 11), torch.float32, 9).clamp(0, 1)
    warped = _smooth_random((1, 1, 12, 10, 11), torch.float32, 10).clamp(0, 1)
    cues = fixed_image_cues(fixed)
    scripted_cues = torch.jit.script(fixed_image_cues)(fixed)
    assert all(torch.equal(a, b) for a, b in zip(cues, scripted_cues))
    assert torch.equal(torch.jit.script(registration_features)(warped, fixed, cues, 1.0),
                       registration_features(warped, fixed, cues, 1.0))
    points = torch.randn(3, 12 * 10 * 11)
    for a, b in zip(torch.jit.script(_head_cues)(fixed, points), _head_cues(fixed, points)):
        assert torch.equal(a, b)
