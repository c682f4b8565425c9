"""Compile every CUDA source of the op library with nvcc, without a GPU.

CI's torch is the CPU wheel, so ``setup.py`` never builds ``csrc/ops/cuda``.
This script still makes CUDA code that does not compile fail CI: it runs
``nvcc -c`` on each ``.cu`` file against torch's headers. The CPU wheel lacks
``c10/cuda/impl/cuda_cmake_macros.h``, so a one-line stand-in is generated in
a temporary include directory. Objects are discarded.

Run with:
    python tools/check_cuda_compiles.py [--arch 90] [--jobs 2]

Exit status: 0 when every file compiles, 1 when one fails, 2 when nvcc is
missing (unless --allow-missing-nvcc, which makes that a warning).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90", help="SM architecture to compile for (default 90: Hopper)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc processes")
    parser.add_argument("--allow-missing-nvcc", action="store_true", help="exit 0 with a warning if nvcc is absent")
    args = parser.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda_compiles: nvcc not found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
        return 0 if args.allow_missing_nvcc else 2

    import torch.utils.cpp_extension as cpp_extension

    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "ops", "cuda", "*.cu")))
    if not sources:
        print("check_cuda_compiles: no .cu files found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="itk_odereg_nvcc_") as tmp:
        stand_in = os.path.join(tmp, "include", "c10", "cuda", "impl")
        os.makedirs(stand_in)
        with open(os.path.join(stand_in, "cuda_cmake_macros.h"), "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes = [os.path.join(tmp, "include")] + cpp_extension.include_paths()
        base = [nvcc, "-c", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
                f"-gencode=arch=compute_{args.arch},code=sm_{args.arch}", "-DITK_ODEREG_WITH_CUDA=1",
                "-DTORCH_EXTENSION_NAME=_C", "-w"]
        base += [f"-I{p}" for p in includes]

        def compile_one(src: str):
            start = time.perf_counter()
            obj = os.path.join(tmp, os.path.basename(src) + ".o")
            proc = subprocess.run(base + [src, "-o", obj], capture_output=True, text=True)
            return src, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start

        failed = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for src, code, log, seconds in pool.map(compile_one, sources):
                rel = os.path.relpath(src, ROOT)
                if code == 0:
                    print(f"check_cuda_compiles: OK   {rel} ({seconds:.0f} s)")
                else:
                    failed += 1
                    print(f"check_cuda_compiles: FAIL {rel}\n{log}", file=sys.stderr)
    print(f"check_cuda_compiles: {len(sources) - failed} of {len(sources)} CUDA sources compile with {nvcc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
