"""Tests of the image similarity losses in ``itk_odereg.losses``.

The synthetic phantom has a background and three tissue classes (CSF, GM, WM)
with a wavy GM/WM boundary and two blobs, slightly blurred. "T1" and "T2"
give the classes different, non-monotonically related intensities (T2 is
not an affine function of T1), so a multimodal metric must not rely on the
intensities matching.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from itk_odereg.losses import (
    METRICS,
    LNCCLoss,
    MILoss,
    MSELoss,
    NGFLoss,
    box_sum,
    lncc_loss,
    make_metric,
    mse_loss,
    mutual_information_loss,
    ngf_loss,
)

T1 = (0.0, 0.25, 0.55, 0.85)  # background, CSF, GM, WM
T2 = (0.0, 0.95, 0.60, 0.35)
SHAPES = {2: (40, 44), 3: (20, 24, 22)}


def _labels(shape, shift):
    nd = len(shape)
    axes = [(torch.arange(s, dtype=torch.float64) - (s - 1) / 2 - sh) / ((s - 1) / 2) for s, sh in zip(shape, shift)]
    grid = torch.meshgrid(*axes, indexing="ij")
    scale = [0.85, 1.0, 0.9][-nd:]
    r = torch.sqrt(sum((g / s) ** 2 for g, s in zip(grid, scale)))
    lab = torch.zeros(shape, dtype=torch.long)
    lab[r < 0.85] = 1
    lab[r < 0.7] = 2
    lab[r < 0.45 + 0.08 * torch.sin(5 * grid[-1]) * torch.cos(4 * grid[-2])] = 3
    for centre, radius, label in (([0.15, -0.1, 0.05], 0.15, 1), ([-0.2, 0.25, -0.3], 0.12, 2)):
        lab[torch.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre[-nd:]))) < radius] = label
    return lab


def _blur(x, sigma=0.8, radius=2):
    nd = x.dim() - 2
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    conv = F.conv3d if nd == 3 else F.conv2d
    for d in range(nd):
        shape, pad = [1] * nd, [0] * nd
        shape[d], pad[d] = 2 * radius + 1, radius
        x = conv(x, k.reshape(1, 1, *shape), padding=pad)
    return x


def phantom(ndim=3, contrast=T1, shift=0.0, dtype=torch.float64, shape=None):
    """Tensor[1, 1, *S]; ``shift`` (voxels) moves the anatomy along the first spatial axis."""
    shape = shape or SHAPES[ndim]
    lab = _labels(shape, [shift] + [0.0] * (len(shape) - 1))
    return _blur(torch.tensor(contrast, dtype=torch.float64)[lab][None, None]).to(dtype)


def _random_pair(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(shape, generator=g, dtype=torch.float64)
    m = 0.7 * f + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    return f.to(dtype), m.to(dtype)


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded: the images here are tiny, and on a busy 2-core machine every
    OpenMP parallel region of a multi-threaded op can wait a whole scheduler time slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Each metric with small-image options; MI uses fixed ranges where exact gradients are compared.
LOSSES = {
    "lncc": lambda f, m, **kw: lncc_loss(f, m, 5, **kw),
    "mse": lambda f, m, **kw: mse_loss(f, m, **kw),
    "mi": lambda f, m, **kw: mutual_information_loss(f, m, 16, **kw),
    "nmi": lambda f, m, **kw: mutual_information_loss(f, m, 16, normalized=True, **kw),
    "ngf": lambda f, m, **kw: ngf_loss(f, m, **kw),
}


def _naive_lncc(fixed, moving, window, mask=None, eps=1e-3):
    """Slow reference: local means from avg_pool (count_include_pad=False), in plain autograd."""
    nd = fixed.dim() - 2
    pool = F.avg_pool3d if nd == 3 else F.avg_pool2d
    ws = [window] * nd if isinstance(window, int) else list(window)
    dims = tuple(range(2, 2 + nd))
    m = torch.ones_like(fixed[:, :1]) if mask is None else (mask != 0).to(fixed.dtype).expand_as(fixed[:, :1])

    def local_mean(x):
        # mean of x over the mask voxels of each window, windows clipped to the image; pad with
        # zeros so that windows wider than the image are allowed too (avg_pool needs pad <= k / 2)
        pads = []
        for w in reversed(ws):
            pads += [w // 2, w // 2]
        num = pool(F.pad(x * m, pads), ws, stride=1)
        den = pool(F.pad(m.expand_as(x), pads), ws, stride=1)
        return num / den.clamp_min(1e-12), den

    def global_var(x):
        mean = (x * m).sum(dims, keepdim=True) / m.sum(dims, keepdim=True)
        return ((x - mean) ** 2 * m).sum(dims, keepdim=True) / m.sum(dims, keepdim=True)

    mf, _ = local_mean(fixed)
    mm, _ = local_mean(moving)
    cov = local_mean(fixed * moving)[0] - mf * mm
    var_f = local_mean(fixed * fixed)[0] - mf * mf + eps * global_var(fixed)
    var_m = local_mean(moving * moving)[0] - mm * mm + eps * global_var(moving)
    ncc2 = cov**2 / (var_f * var_m)
    return 1 - (ncc2 * m).sum() / (m.sum() * fixed.shape[1])


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", list(LOSSES))
def test_minimal_at_alignment_and_increasing_with_shift(name, ndim):
    fixed = phantom(ndim)
    values = [LOSSES[name](fixed, phantom(ndim, shift=s)).item() for s in (0.0, 0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    for sign in (-1.0, 1.0):  # both directions
        assert values[0] < LOSSES[name](fixed, phantom(ndim, shift=sign * 1.0)).item()
    if name == "mse":
        assert values[0] == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_metrics_along_every_axis(ndim):
    fixed = phantom(ndim)
    for d in range(ndim):
        moved = torch.roll(fixed, 2, dims=2 + d)
        for name, fn in LOSSES.items():
            assert fn(fixed, fixed).item() < fn(fixed, moved).item(), (name, d)


# --------------------------------------------------------------------------- LNCC against references


@pytest.mark.parametrize(
    "shape,window",
    [
        ((2, 1, 9, 10, 11), 5),
        ((1, 2, 7, 8, 9), (3, 5, 7)),
        ((1, 1, 6, 7, 5), 21),  # window wider than the image
        ((2, 1, 12, 13), 3),
        ((1, 3, 11, 9), (7, 1)),
    ],
)
@pytest.mark.parametrize("masked", [False, True])
def test_lncc_matches_naive_reference(shape, window, masked):
    fixed, moving = _random_pair(shape)
    mask = None
    if masked:
        g = torch.Generator().manual_seed(1)
        mask = torch.rand((shape[0], 1) + shape[2:], generator=g) > 0.3
    m1 = moving.clone().requires_grad_(True)
    m2 = moving.clone().requires_grad_(True)
    ours = lncc_loss(fixed, m1, window, mask=mask)
    ref = _naive_lncc(fixed, m2, window, mask=mask)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    (g1,) = torch.autograd.grad(ours, m1)
    (g2,) = torch.autograd.grad(ref, m2)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-12)


def test_lncc_float32_matches_reference():
    f64 = phantom(3, shape=(24, 28, 24)) * 300 + 1000  # large offset: tests the cancellation handling
    m64 = phantom(3, contrast=T2, shift=1.3, shape=(24, 28, 24)) * 200 + 50
    ref = _naive_lncc(f64, m64, 9)
    m32 = m64.float().requires_grad_(True)
    ours = lncc_loss(f64.float(), m32, 9)
    assert abs(ours.item() - ref.item()) < 1e-5
    (g32,) = torch.autograd.grad(ours, m32)
    m64r = m64.clone().requires_grad_(True)
    (g64,) = torch.autograd.grad(_naive_lncc(f64, m64r, 9), m64r)
    assert (g32.double() - g64).abs().max() <= 1e-4 * g64.abs().max()


@pytest.mark.parametrize("shape,window", [((1, 2, 7, 9, 8), 5), ((2, 1, 10, 7), (3, 7)), ((1, 1, 4, 5), 11)])
def test_box_sum_equals_conv_with_ones(shape, window):
    x = torch.randn(shape, dtype=torch.float64)
    nd = len(shape) - 2
    ws = [window] * nd if isinstance(window, int) else list(window)
    conv = F.conv3d if nd == 3 else F.conv2d
    c = shape[1]
    ref = conv(x, torch.ones(c, 1, *ws, dtype=x.dtype), padding=[w // 2 for w in ws], groups=c)
    torch.testing.assert_close(box_sum(x, window), ref)
    x_before = x.clone()
    box_sum(x, window)
    assert torch.equal(x, x_before)  # not in place
    xs = x[:1, :1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, window), (xs,))


def test_lncc_gradient_wrt_fixed_only():
    fixed, moving = _random_pair((1, 1, 6, 7, 8))
    f = fixed.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: lncc_loss(x, moving, 3), (f,))


# --------------------------------------------------------------------------- intensity relationships


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("a,b", [(2.5, 0.3), (-1.0, 1.0), (-0.01, 7.0), (100.0, -40.0)])
def test_lncc_invariant_to_affine_intensity_changes(ndim, a, b):
    fixed = phantom(ndim)
    moving = phantom(ndim, contrast=T2, shift=0.7)
    base = lncc_loss(fixed, moving, 5)
    torch.testing.assert_close(lncc_loss(fixed, a * moving + b, 5), base, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lncc_loss(a * fixed + b, moving, 5), base, rtol=1e-9, atol=1e-9)
    # and the inverted image of itself is a perfect match, as the image itself is
    torch.testing.assert_close(lncc_loss(fixed, a * fixed + b, 5), lncc_loss(fixed, fixed, 5), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_multimodal_metrics_score_other_contrast_high_mse_does_not(ndim):
    t1 = phantom(ndim)
    t2 = phantom(ndim, contrast=T2)
    for name, shift in (("mi", 1.0), ("nmi", 1.0), ("ngf", 2.0)):
        fn = LOSSES[name]
        aligned_t2 = fn(t1, t2).item()
        # better than the same contrast misaligned, and minimal at alignment
        assert aligned_t2 < fn(t1, phantom(ndim, shift=shift)).item(), name
        assert aligned_t2 < fn(t1, phantom(ndim, contrast=T2, shift=0.5)).item(), name
        assert aligned_t2 < fn(t1, phantom(ndim, contrast=T2, shift=-0.5)).item(), name
    # MSE ranks the aligned T2 image below a 3-voxel misalignment of the T1 image
    assert mse_loss(t1, t2).item() > mse_loss(t1, phantom(ndim, shift=3.0)).item()
    # an exact intensity inversion is a perfect match for MI and NGF
    inv = 1.0 - t1
    for name in ("mi", "nmi", "ngf"):
        torch.testing.assert_close(LOSSES[name](t1, inv), LOSSES[name](t1, t1), rtol=1e-6, atol=1e-6)
    assert mse_loss(t1, inv).item() > mse_loss(t1, phantom(ndim, shift=3.0)).item()


# --------------------------------------------------------------------------- robustness and gradients


def _degenerate_images(ndim):
    shape = (1, 1) + SHAPES[ndim]
    zeros = torch.zeros(shape, dtype=torch.float64)
    const = torch.full(shape, 0.3, dtype=torch.float64)
    img = phantom(ndim)
    half = img.clone()
    half[..., : shape[-1] // 2] = 0.0  # zero region
    return {"zeros": zeros, "const": const, "image": img, "half": half}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(LOSSES))
def test_finite_on_constant_and_zero_regions(name, ndim, dtype):
    imgs = {k: v.to(dtype) for k, v in _degenerate_images(ndim).items()}
    pairs = [("zeros", "zeros"), ("const", "const"), ("image", "zeros"), ("zeros", "image"),
             ("image", "const"), ("const", "image"), ("half", "image"), ("image", "half"), ("half", "half")]
    for fk, mk in pairs:
        f = imgs[fk].clone().requires_grad_(True)
        m = imgs[mk].clone().requires_grad_(True)
        loss = LOSSES[name](f, m)
        loss.backward()
        assert torch.isfinite(loss), (fk, mk)
        assert torch.isfinite(f.grad).all() and torch.isfinite(m.grad).all(), (fk, mk)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(1, 1, 5, 6, 7), (2, 2, 7, 6)])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(name, shape, masked):
    for seed in range(1 if name in ("mi", "nmi") else 2):  # MI: one seed, its histogram loop is slower
        fixed, moving = _random_pair(shape, seed=seed)
        kw = {}
        if masked:
            g = torch.Generator().manual_seed(seed)
            kw["mask"] = torch.rand((shape[0], 1) + shape[2:], generator=g) > 0.25
        if name in ("mi", "nmi"):  # a range fixed beforehand: the data range is not differentiated
            kw.update(fixed_range=(-0.1, 1.1), moving_range=(-0.2, 1.4))
        f = fixed.clone().requires_grad_(True)
        m = moving.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: LOSSES[name](a, b, **kw), (f, m)), (name, seed)



def _autograd_ngf(fixed, moving, eps, mask, spacing):
    """NGF in plain autograd through ``torch.gradient``: the reference of the hand-written backward."""
    nd = fixed.dim() - 2
    dims = tuple(range(2, 2 + nd))

    def differences(x):
        return [torch.gradient(x, spacing=1.0 if spacing is None else spacing[k], dim=2 + k, edge_order=1)[0]
                if x.shape[2 + k] > 1 else torch.zeros_like(x) for k in range(nd)]

    w = None
    if mask is not None:
        inside = (mask != 0).to(fixed.dtype).expand(fixed.shape[0], 1, *fixed.shape[2:])
        w = inside
        for k in range(nd):  # keep the voxels whose +-1 neighbours are inside too
            d, n = 2 + k, fixed.shape[2 + k]
            if n > 1:
                lo = torch.cat([inside.narrow(d, 0, 1), inside.narrow(d, 0, n - 1)], d)
                hi = torch.cat([inside.narrow(d, 1, n - 1), inside.narrow(d, n - 1, 1)], d)
                w = w * lo * hi

    def normalizer(g):
        squared = sum(c.square() for c in g)
        mean = squared.mean(dims, keepdim=True) if w is None else \
            (squared * w).sum(dims, keepdim=True) / w.sum(dims, keepdim=True).clamp_min(1.0)
        return squared + (eps * eps * mean).clamp_min(1e-15 if fixed.dtype == torch.float32 else 1e-100)

    gf, gm = differences(fixed), differences(moving)
    value = sum(a * b for a, b in zip(gf, gm)).square() / (normalizer(gf) * normalizer(gm))
    if w is None:
        return 1.0 - value.mean()
    return 1.0 - (value * w).sum() / (w.sum() * fixed.shape[1]).clamp_min(1.0)


@pytest.mark.parametrize("shape", [(1, 1, 9, 8, 7), (2, 2, 6, 5), (1, 1, 2, 5, 4), (1, 1, 1, 6, 5)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("spacing", [None, "aniso"])
def test_ngf_backward_equals_autograd_through_torch_gradient(shape, masked, spacing):
    """The hand-written NGF backward gives autograd's gradients for both images, with masks,
    anisotropic spacing and axes of one or two samples; the module (fixed terms kept) too."""
    nd = len(shape) - 2
    sp = None if spacing is None else [1.5, 2.0, 0.7][-nd:]
    fixed, moving = _random_pair(shape, seed=5)
    mask = (torch.rand((1, 1) + shape[2:], generator=torch.Generator().manual_seed(2)) > 0.3) if masked else None
    f, m = fixed.clone().requires_grad_(True), moving.clone().requires_grad_(True)
    f_ref, m_ref = fixed.clone().requires_grad_(True), moving.clone().requires_grad_(True)
    loss = ngf_loss(f, m, 0.3, mask=mask, spacing=sp)
    reference = _autograd_ngf(f_ref, m_ref, 0.3, mask, sp)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    expected = torch.autograd.grad(reference, (f_ref, m_ref))
    for got, want in zip(torch.autograd.grad(loss, (f, m)), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    module, moving_only = NGFLoss(0.3, spacing=sp), moving.clone().requires_grad_(True)
    for _ in range(2):  # the second call takes the fixed image's terms from the module's cache
        moving_only.grad = None
        module(fixed, moving_only, mask).backward()
        torch.testing.assert_close(moving_only.grad, expected[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", list(LOSSES))
def test_mask_restricts_the_computation(name, ndim):
    fixed = phantom(ndim)
    moving = phantom(ndim, contrast=T2, shift=0.8)
    shape = fixed.shape
    mask = torch.zeros((1, 1) + shape[2:], dtype=torch.bool)
    inner = tuple(slice(s // 4, s - s // 4) for s in shape[2:])
    mask[(0, 0) + inner] = True
    g = torch.Generator().manual_seed(3)
    noise_f = torch.rand(shape, generator=g, dtype=fixed.dtype) * 5
    noise_m = torch.rand(shape, generator=g, dtype=fixed.dtype) * 5
    fixed2 = torch.where(mask, fixed, noise_f)
    moving2 = torch.where(mask, moving, noise_m)
    m1 = moving.clone().requires_grad_(True)
    m2 = moving2.clone().requires_grad_(True)
    kw = dict(mask=mask)
    a = LOSSES[name](fixed, m1, **kw)
    b = LOSSES[name](fixed2, m2, **kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (ga,) = torch.autograd.grad(a, m1)
    (gb,) = torch.autograd.grad(b, m2)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    assert (ga[~mask.expand_as(ga)] == 0).all()
    # the mask does make a difference
    assert abs(a.item() - LOSSES[name](fixed, moving).item()) > 1e-6
    # a float mask and a batch-sized mask mean the same
    torch.testing.assert_close(LOSSES[name](fixed, moving, mask=mask.double()), a.detach())


# --------------------------------------------------------------------------- MI specifics


def test_mi_sampling_is_seeded_and_close_to_full():
    fixed = phantom(3)
    moving = phantom(3, contrast=T2, shift=0.6)
    full = mutual_information_loss(fixed, moving).item()

    def sampled(seed, samples):
        gen = torch.Generator().manual_seed(seed)
        return mutual_information_loss(fixed, moving, samples=samples, generator=gen).item()

    assert sampled(0, 0.5) == sampled(0, 0.5)
    assert sampled(0, 0.5) != sampled(1, 0.5)
    assert abs(sampled(0, 0.5) - full) < 0.1 * abs(full)
    assert abs(sampled(2, 4000) - full) < 0.1 * abs(full)
    # gradients only at the sampled voxels
    m = moving.clone().requires_grad_(True)
    mutual_information_loss(fixed, m, samples=100, generator=torch.Generator().manual_seed(0)).backward()
    assert 0 < int((m.grad != 0).sum()) <= 100


@pytest.mark.parametrize("normalized", [False, True])
def test_mi_dense_and_sparse_histograms_agree(monkeypatch, normalized):
    from itk_odereg.losses import mutual_information as functional

    fixed = phantom(3)
    moving = phantom(3, contrast=T2, shift=0.6)
    results = []
    for dense_min in (0, 1 << 30):  # all chunks dense, all chunks sparse
        monkeypatch.setattr(functional, "_MI_DENSE_MIN", dense_min)
        monkeypatch.setattr(functional, "_MI_CHUNK", 4096)  # several chunks
        f = fixed.clone().requires_grad_(True)
        m = moving.clone().requires_grad_(True)
        loss = mutual_information_loss(f, m, 24, normalized=normalized)
        loss.backward()
        results.append((loss.detach(), f.grad, m.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mi_explicit_ranges_and_percentiles():
    fixed = phantom(2)
    moving = phantom(2, contrast=T2, shift=0.6)
    a = mutual_information_loss(fixed, moving, percentiles=(0, 100))
    b = mutual_information_loss(
        fixed, moving, fixed_range=(fixed.min().item(), fixed.max().item()),
        moving_range=(moving.min().item(), moving.max().item()),
    )
    torch.testing.assert_close(a, b)
    # MI is invariant to monotonic (here affine) intensity maps when the ranges follow
    c = mutual_information_loss(3 * fixed + 1, 0.5 * moving - 2, percentiles=(0, 100))
    torch.testing.assert_close(a, c)


def test_nmi_range():
    t1 = phantom(2)
    v = -mutual_information_loss(t1, t1, normalized=True).item()
    assert 1.0 < v <= 2.0


# --------------------------------------------------------------------------- modules and registry


def test_modules_match_functional_and_repr():
    fixed = phantom(3)
    moving = phantom(3, contrast=T2, shift=0.6)
    mask = fixed > 0.1
    cases = [
        (LNCCLoss(window=5), lncc_loss(fixed, moving, 5, mask=mask), "window=5"),
        (
            LNCCLoss(window=(3, 5, 7), eps=1e-4),
            lncc_loss(fixed, moving, (3, 5, 7), mask=mask, eps=1e-4),
            "window=(3, 5, 7)",
        ),
        (MSELoss(), mse_loss(fixed, moving, mask=mask), "MSELoss()"),
        (
            MILoss(bins=24, normalized=True),
            mutual_information_loss(fixed, moving, 24, mask=mask, normalized=True),
            "bins=24",
        ),
        (
            NGFLoss(eps=0.3, spacing=(2.0, 1.0, 1.0)),
            ngf_loss(fixed, moving, 0.3, mask=mask, spacing=(2.0, 1.0, 1.0)),
            "spacing=",
        ),
    ]
    for module, expected, text in cases:
        torch.testing.assert_close(module(fixed, moving, mask=mask), expected)
        assert text in repr(module)
    a = MILoss(samples=0.3, seed=5)
    b = MILoss(samples=0.3, seed=5)
    assert a(fixed, moving).item() == b(fixed, moving).item()
    assert "seed=5" in repr(a) and "samples=0.3" in repr(a)


def test_make_metric():
    assert set(METRICS) == {"lncc", "mse", "mi", "ngf"}
    assert isinstance(make_metric("lncc", window=7), LNCCLoss)
    assert make_metric("lncc", window=7).window == 7
    assert isinstance(make_metric("mse"), MSELoss)
    assert isinstance(make_metric("mi", bins=16, samples=1000), MILoss)
    assert isinstance(make_metric("ngf"), NGFLoss)
    expected = "Invalid metric \"ncc\". Must be one of ['lncc', 'mse', 'mi', 'ngf']"
    with pytest.raises(ValueError, match=re.escape(expected)):
        make_metric("ncc")
    with pytest.raises(TypeError):
        make_metric("mse", window=3)


# --------------------------------------------------------------------------- bad arguments


def test_bad_arguments():
    f = torch.rand(1, 1, 6, 7, 8)
    m = torch.rand(1, 1, 6, 7, 8)
    with pytest.raises(ValueError, match="'window' must be an odd positive int"):
        lncc_loss(f, m, 8)
    with pytest.raises(ValueError, match="'window'"):
        lncc_loss(f, m, 0)
    with pytest.raises(ValueError, match="'window'"):
        lncc_loss(f, m, (3, 3))
    with pytest.raises(ValueError, match="'window'"):
        LNCCLoss(window=4)(f, m)
    with pytest.raises(ValueError, match="'fixed' and 'moving' must have the same shape"):
        lncc_loss(f, m[:, :, :5])
    for fn in (mse_loss, mutual_information_loss, ngf_loss):
        with pytest.raises(ValueError, match="'fixed' and 'moving' must have the same shape"):
            fn(f, m[..., :5])
    with pytest.raises(ValueError, match="same dtype"):
        mse_loss(f, m.double())
    with pytest.raises(ValueError, match="'moving' must be float32 or float64"):
        mse_loss(f, m.long())
    with pytest.raises(ValueError, match=r"'fixed' must have shape \[N, C, H, W\]"):
        ngf_loss(f[0, 0], m[0, 0])
    with pytest.raises(TypeError, match="'moving' must be a torch.Tensor"):
        mse_loss(f, m.numpy())
    with pytest.raises(ValueError, match="'mask' must have shape"):
        lncc_loss(f, m, 3, mask=torch.ones(1, 1, 6, 7))
    with pytest.raises(ValueError, match="'mask' must have shape"):
        mse_loss(f, m, mask=torch.ones(1, 2, 6, 7, 8))
    with pytest.raises(ValueError, match="'eps' must be a positive"):
        lncc_loss(f, m, 3, eps=0.0)
    with pytest.raises(ValueError, match="'eps' must be a positive"):
        ngf_loss(f, m, eps=-1.0)
    with pytest.raises(ValueError, match="'bins' must be an int >= 8"):
        mutual_information_loss(f, m, bins=4)
    with pytest.raises(ValueError, match="'samples'"):
        mutual_information_loss(f, m, samples=1.5)
    with pytest.raises(ValueError, match="'samples'"):
        mutual_information_loss(f, m, samples=0)
    with pytest.raises(ValueError, match="'percentiles'"):
        mutual_information_loss(f, m, percentiles=(50, 10))
    with pytest.raises(ValueError, match="'moving_range'"):
        mutual_information_loss(f, m, moving_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="'mask' is empty"):
        mutual_information_loss(f, m, mask=torch.zeros(1, 1, 6, 7, 8))
    with pytest.raises(ValueError, match="'spacing'"):
        ngf_loss(f, m, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="'window'"):
        box_sum(f, 2)


def test_lncc_is_one_for_flat_images_and_bounded():
    f, m = _random_pair((1, 1, 8, 9, 10))
    v = lncc_loss(f, m, 3).item()
    assert 0.0 <= v <= 1.0
    const = torch.full_like(f, 2.0)
    assert lncc_loss(const, m, 3).item() == pytest.approx(1.0, abs=1e-9)
    assert ngf_loss(const, m).item() == pytest.approx(1.0, abs=1e-9)
    assert math.isfinite(mutual_information_loss(const, m).item())


def test_lncc_module_reuses_the_fixed_images_terms_exactly():
    """LNCCLoss keeps the fixed image's own terms between calls: the same bits as the functional
    form, and a new fixed tensor, an in-place change to it, a new mask or window are all seen."""
    from itk_odereg.losses import LNCCLoss, lncc_loss

    torch.manual_seed(5)
    fixed = torch.randn(1, 1, 12, 14, 10, dtype=torch.float64)
    loss = LNCCLoss(window=5)
    mask = (fixed > -0.5).double()

    def check(f, m=None):
        moving = (f + 0.5 * torch.randn_like(f)).requires_grad_(True)
        got = loss(f, moving, m)
        (grad,) = torch.autograd.grad(got, moving)
        expected = lncc_loss(f, moving, window=loss.window, mask=m)
        (grad_expected,) = torch.autograd.grad(expected, moving)
        assert torch.equal(got, expected) and torch.equal(grad, grad_expected)

    for _ in range(2):
        check(fixed)                  # the second call reuses the first one's terms
    check(fixed, mask)                # a mask
    fixed.mul_(-2.0).add_(1.0)        # in place: the version counter changes
    check(fixed)
    check(fixed.clone())              # another tensor with the same values
    loss.window = 3
    check(fixed)
    # A fixed image that requires grad gets its gradient, as from the functional form.
    f = fixed.clone().requires_grad_(True)
    moving = fixed + 0.3
    (g1,) = torch.autograd.grad(loss(f, moving), f)
    (g2,) = torch.autograd.grad(lncc_loss(f, moving, window=3), f)
    assert torch.equal(g1, g2) and float(g1.abs().max()) > 0


def test_ngf_module_reuses_the_fixed_images_terms_exactly():
    """NGFLoss keeps the fixed image's gradient terms between calls, with the same bits as ngf_loss."""
    from itk_odereg.losses import NGFLoss, ngf_loss

    torch.manual_seed(6)
    fixed = torch.randn(1, 1, 12, 14, 10, dtype=torch.float64)
    loss = NGFLoss(eps=0.1, spacing=(2.0, 1.0, 1.5))
    mask = (fixed > -0.5).double()

    def check(f, m=None):
        moving = (f + 0.5 * torch.randn_like(f)).requires_grad_(True)
        got = loss(f, moving, m)
        (grad,) = torch.autograd.grad(got, moving)
        expected = ngf_loss(f, moving, eps=loss.eps, mask=m, spacing=loss.spacing)
        (grad_expected,) = torch.autograd.grad(expected, moving)
        assert torch.equal(got, expected) and torch.equal(grad, grad_expected)

    for _ in range(2):
        check(fixed)
    check(fixed, mask)
    fixed.mul_(-2.0).add_(1.0)
    check(fixed)
    loss.eps = 0.3
    check(fixed)
    f = fixed.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(loss(f, fixed + 0.3 * torch.randn_like(fixed)), f)
    assert float(g1.abs().max()) > 0
