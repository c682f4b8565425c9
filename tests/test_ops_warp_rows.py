"""The AVX2 row kernels of warp / sample_at (csrc/ops/cpu/warp_rows_avx2.h): 3D float32 grids
whose rows hold whole blocks of 8 voxels, against grid_sample, and bit for bit against the
scalar kernels (``ITK_ODEREG_SCALAR_KERNELS=1``): the forward, the displacement's gradient
alone, and both gradients (the image's is a scatter, added in the scalar kernel's order).

The other warp tests mostly use rows shorter than 8 voxels, which only the scalar kernels
serve. On a CPU without AVX2 both runs here are the scalar kernels."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from itk_odereg import ops
from itk_odereg.ops import _reference
from test_ops_warp import _grads

# (image grid, displacement grid): the same grid (warp), and a coarse control grid sampled from a
# finer flow grid (sample_at), as NODEO uses them. The rows (last axis) are 37 voxels: four blocks
# of 8 and a scalar tail.
GRIDS = {"warp": ((6, 9, 37), (6, 9, 37)), "sample_at": ((5, 6, 11), (6, 9, 37))}


def _inputs(kind: str, channels: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image_shape, shape = GRIDS[kind]
    image = torch.randn(2, channels, *image_shape, generator=generator)
    # Mostly small displacements (interior cells, the vector path), with a few voxels pushed
    # outside the box, so that some blocks mix interior and border cells (the scalar fallback,
    # which the image's scatter must meet in voxel order: neighbouring cells share corners).
    displacement = torch.randn(2, 3, *shape, generator=generator) * 0.4
    displacement[:, :, :, ::4, 5] += 6.0
    displacement[:, 2, 1, :, 30:] -= 40.0
    return image, displacement


def _op(kind: str):
    return ops.warp if kind == "warp" else ops.sample_at


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("kind", ["warp", "sample_at"])
def test_row_kernels_match_grid_sample(kind, padding):
    reference = _reference.warp if kind == "warp" else _reference.sample_at
    for channels in (1, 3):
        image, displacement = _inputs(kind, channels)
        out = _op(kind)(image, displacement, padding)
        torch.testing.assert_close(out, reference(image, displacement, padding), atol=2e-5, rtol=0)
        # The displacement's gradient alone (the row kernels' backward) and both gradients.
        grad_output = torch.randn_like(out)
        u = displacement.clone().requires_grad_(True)
        (gu,) = torch.autograd.grad(_op(kind)(image, u, padding), [u], grad_output)
        u_ref = displacement.clone().requires_grad_(True)
        (ru,) = torch.autograd.grad(reference(image, u_ref, padding), [u_ref], grad_output)
        torch.testing.assert_close(gu, ru, atol=1e-4, rtol=1e-4)
        _, (gi2, gu2) = _grads(lambda i, v: _op(kind)(i, v, padding), (image, displacement), grad_output)
        _, (ri2, ru2) = _grads(lambda i, v: reference(i, v, padding), (image, displacement), grad_output)
        torch.testing.assert_close(gi2, ri2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gu2, ru2, atol=1e-4, rtol=1e-4)


_BITS_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_ops_warp_rows import _inputs, _op
    torch.set_num_threads(2)
    results = []
    for kind in ("warp", "sample_at"):
        for padding in ("zeros", "border"):
            image, displacement = _inputs(kind, 3, seed=1)
            # Four batch elements: more than one 4096-voxel task, so both threads scatter.
            image, displacement = image.repeat(2, 1, 1, 1, 1), displacement.repeat(2, 1, 1, 1, 1)
            displacement[0, 1, 2, 3, 9] = float("nan")
            u = displacement.clone().requires_grad_(True)
            out = _op(kind)(image, u, padding)
            grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
            (gu,) = torch.autograd.grad(out, [u], grad_output)
            # Both gradients: the image's is a scatter (sample_at's control field), two threads.
            i, v = image.clone().requires_grad_(True), displacement.clone().requires_grad_(True)
            gi2, gu2 = torch.autograd.grad(_op(kind)(i, v, padding), [i, v], grad_output)
            results += [out.detach(), gu, gi2, gu2]
    torch.save(results, sys.argv[1])
""")


def test_row_kernels_are_the_scalar_kernels_bits(tmp_path):
    """Forward and both gradients, NaN included: the same bits with the row kernels on and off
    (each in its own process: the switch is read once per process)."""
    script = tmp_path / "bits.py"
    script.write_text(_BITS_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    results = {}
    for mode in ("rows", "scalar"):
        env = {k: v for k, v in os.environ.items() if k != "ITK_ODEREG_SCALAR_KERNELS"}
        if mode == "scalar":
            env["ITK_ODEREG_SCALAR_KERNELS"] = "1"
        path = tmp_path / f"{mode}.pt"
        subprocess.run([sys.executable, str(script), str(path)], check=True, env=env, timeout=300)
        results[mode] = torch.load(path)
    assert len(results["rows"]) == 16
    for rows, scalar in zip(results["rows"], results["scalar"]):
        assert torch.equal(torch.nan_to_num(rows, nan=123.0), torch.nan_to_num(scalar, nan=123.0))
        assert torch.isnan(rows).sum() == torch.isnan(scalar).sum()
