"""Build information of the native modules (itk_odereg._wrapping, pybind11)."""
from __future__ import annotations

import torch

import itk_odereg
from itk_odereg import _wrapping


def _has_cuda_kernels() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("itk_odereg::warp", "CUDA")


def test_build_info_fields():
    info = _wrapping.build_info()
    assert set(info) == {"version", "cuda_compiled", "openmp_max_threads"}
    assert info["version"] == itk_odereg.__version__ == _wrapping.version()
    assert isinstance(info["cuda_compiled"], bool)
    assert info["cuda_compiled"] == _wrapping.cuda_compiled()
    assert isinstance(info["openmp_max_threads"], int) and info["openmp_max_threads"] >= 1


def test_cuda_compiled_matches_the_registered_kernels():
    info = _wrapping.build_info()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("itk_odereg::warp", "CPU")
    # The flag and the op library agree on whether CUDA kernels were built...
    assert info["cuda_compiled"] == _has_cuda_kernels()
    # ...and a CPU-only torch cannot have produced a CUDA build.
    if torch.version.cuda is None:
        assert info["cuda_compiled"] is False
    if torch.cuda.is_available() and info["cuda_compiled"]:
        image = torch.randn(1, 1, 3, 4, device="cuda")
        assert torch.equal(itk_odereg.ops.warp(image, torch.zeros(1, 2, 3, 4, device="cuda")), image)


def test_openmp():
    assert isinstance(_wrapping.openmp_enabled(), bool)
    # setup.py builds with -fopenmp: the CPU kernels must run in parallel.
    assert _wrapping.openmp_enabled()
    assert _wrapping.openmp_max_threads() >= 1
