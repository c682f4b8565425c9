"""The CMake build of the op library, used from a plain libtorch C++ program.

Builds CMakeLists.txt against the installed torch's CMake config, then runs
tests/cpp/test_ops_libtorch.cpp, which checks warp against grid_sample,
autograd registered in C++, an exact Jacobian determinant and a named error.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_libtorch_program(tmp_path):
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", ROOT, "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
         "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    jobs = str(os.cpu_count() or 1)
    compiled = subprocess.run(["cmake", "--build", str(build), "-j", jobs], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-5000:] + compiled.stderr[-5000:]
    program = build / "test_ops_libtorch"
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout
