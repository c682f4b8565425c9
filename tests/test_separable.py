"""Separable grid operators (Gaussian smoothing, corner-aligned resampling) and the convergence test.

The resampling is checked against ``F.interpolate(align_corners=True)``, the
smoothing against a direct Gaussian sum, and the fused operator against the
two applied one after the other.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from itk_odereg.core import separable
from itk_odereg.registration.convergence import converged


@pytest.mark.parametrize("shape_in,shape_out", [((7, 9), (13, 5)), ((5, 6, 7), (9, 11, 4)), ((4, 5, 6), (4, 10, 6))])
def test_resampling_matrices_match_interpolate_align_corners(shape_in, shape_out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *shape_in, dtype=torch.float64)
    mode = "bilinear" if len(shape_in) == 2 else "trilinear"
    expected = F.interpolate(x, size=shape_out, mode=mode, align_corners=True)
    matrices = separable.resampling_matrices(shape_in, shape_out, x.dtype, x.device)
    torch.testing.assert_close(separable.apply_separable(x, matrices), expected, atol=1e-12, rtol=1e-12)


def test_gaussian_smooth_is_a_renormalized_gaussian_sum_and_keeps_constants():
    torch.manual_seed(1)
    x = torch.randn(1, 1, 12, dtype=torch.float64).view(1, 1, 12, 1)
    sigma = 1.7
    i = torch.arange(12, dtype=torch.float64)
    w = torch.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    expected = (w / w.sum(1, keepdim=True)) @ x[0, 0, :, 0]
    out = separable.gaussian_smooth(x, [sigma, 0.0])
    torch.testing.assert_close(out[0, 0, :, 0], expected, atol=1e-12, rtol=1e-12)
    ones = torch.ones(1, 2, 6, 7, 8)
    torch.testing.assert_close(separable.gaussian_smooth(ones, [0.8, 2.0, 5.0]), ones)


def test_gaussian_matrix_has_no_float32_denormals():
    # Denormal tails made every product with the matrix tens of times slower on CPU.
    m = separable.gaussian_matrix(60, 0.66, torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((m == 0) | (m.abs() >= tiny)).all())
    assert float(m.sum(1).sub(1).abs().max()) < 1e-6


def test_composed_matrices_equal_the_two_operators_in_turn():
    torch.manual_seed(2)
    x = torch.randn(1, 3, 6, 7, 8, dtype=torch.float64, requires_grad=True)
    smooth = separable.gaussian_matrices(x.shape[2:], [0.7, 1.2, 0.0], x.dtype, x.device)
    up = separable.resampling_matrices(x.shape[2:], (11, 13, 15), x.dtype, x.device)
    fused = separable.apply_separable(x, separable.compose(up, smooth))
    two = separable.apply_separable(separable.apply_separable(x, smooth), up)
    torch.testing.assert_close(fused, two, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: separable.apply_separable(t, separable.compose(up, smooth)), (x,))


def test_apply_separable_names_a_size_mismatch():
    with pytest.raises(ValueError, match="axis 1 has 7 samples"):
        separable.apply_separable(torch.zeros(1, 1, 6, 7), [None, torch.zeros(3, 5)])


def test_convergence_window():
    flat = [1.0 + 1e-6 * (i % 2) for i in range(12)]
    falling = [1.0 - 0.01 * i for i in range(12)]
    assert converged(flat, 10, 1e-3)
    assert not converged(falling, 10, 1e-3)        # 1 % per iteration is still progress
    assert not converged(flat[:9], 10, 1e-3)       # fewer losses than the window
    assert not converged(flat, 10, 0.0)            # threshold 0: never
    rising = [1.0 + 0.01 * i for i in range(12)]
    assert converged(rising, 10, 1e-3)             # a rising loss has stopped improving
