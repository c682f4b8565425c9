"""Build itk_odereg and its two native modules.

* ``itk_odereg._C``: the torch op library (``csrc/``), registered with
  ``TORCH_LIBRARY(itk_odereg, ...)``. CUDA kernels (``csrc/ops/cuda/*.cu``) are
  compiled only when the installed torch has CUDA and a CUDA toolkit is found,
  or when ``USE_CUDA=1`` forces it; ``USE_CUDA=0`` disables them.
* ``itk_odereg._wrapping``: a pybind11 module with build information
  (``wrapping/``; pybind11 here, not ITK's SWIG wrapping).

Build with ``pip install --no-build-isolation -e .`` after installing torch,
so the build uses the torch that is already installed. ``DEBUG=1`` builds
with ``-O0 -g``.
"""
from __future__ import annotations

import glob
import os
import re

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(ROOT, "itk_odereg", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def want_cuda() -> bool:
    flag = os.environ.get("USE_CUDA")
    if flag is not None:
        return flag not in ("0", "", "false", "False")
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def get_extensions():
    debug = os.environ.get("DEBUG", "0") == "1"
    use_cuda = want_cuda()
    version = read_version()
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = [("ITK_ODEREG_VERSION", f'"{version}"')]
    if use_cuda:
        defines.append(("ITK_ODEREG_WITH_CUDA", "1"))

    sources = sorted(
        glob.glob(os.path.join("csrc", "*.cpp"))
        + glob.glob(os.path.join("csrc", "ops", "*.cpp"))
        + glob.glob(os.path.join("csrc", "ops", "cpu", "*.cpp"))
        + glob.glob(os.path.join("csrc", "ops", "autograd", "*.cpp"))
    )
    # at::parallel_for is header-inlined OpenMP: without -fopenmp it runs serially.
    extra = {"cxx": opt + ["-fopenmp", "-std=c++17"]}
    extension = cpp_extension.CppExtension
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
        extra["nvcc"] = opt + ["--expt-relaxed-constexpr", "-std=c++17"]
        extension = cpp_extension.CUDAExtension

    ops_ext = extension(
        "itk_odereg._C",
        sources,
        define_macros=defines,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )

    import pybind11

    wrapping_ext = cpp_extension.CppExtension(
        "itk_odereg._wrapping",
        sorted(glob.glob(os.path.join("wrapping", "*.cpp"))),
        include_dirs=[pybind11.get_include()],
        define_macros=defines,
        extra_compile_args={"cxx": opt + ["-fopenmp", "-std=c++17"]},
        extra_link_args=["-fopenmp"],
    )
    # The build-info module needs neither libtorch nor its headers.
    wrapping_ext.libraries = []
    wrapping_ext.library_dirs = []
    wrapping_ext.runtime_library_dirs = []
    return [ops_ext, wrapping_ext]


setup(
    name="itk-odereg",
    version=read_version(),
    description="Neural-ODE deformable image registration for ITK, SimpleITK and ANTs workflows",
    packages=find_packages(include=["itk_odereg", "itk_odereg.*"]),
    package_data={"itk_odereg.msodenet": ["weights/*.pt"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    # torch is deliberately absent from install_requires: it must be installed
    # first (pip install torch==2.13.0) so pip never swaps in a CUDA build.
    install_requires=["numpy", "scipy", "torchdiffeq>=0.2.3", "SimpleITK>=2.2", "itk>=5.3", "matplotlib", "tqdm>=4.60"],
    extras_require={
        # antspyx: the ANTs interoperability tests run ants.apply_transforms on our outputs.
        "test": ["pytest", "expecttest", "antspyx", "nibabel"],
        "ants": ["antspyx"],
        # Peers of the accuracy benchmark (benchmarks/accuracy.py).
        "benchmark": ["antspyx", "picsl-greedy", "itk-elastix"],
    },
    entry_points={"console_scripts": ["itk-odereg = itk_odereg.cli:main"]},
    zip_safe=False,
)
