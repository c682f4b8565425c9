"""The same answer twice: outputs at 1 and 2 threads, with and without ``--reproducible``, in one run.

For each pair directory (``fixed.nii``/``moving.nii``, as ``benchmarks/accuracy.py --work-dir``
prepares them), ``itk-odereg register`` runs four times: ``--threads 1`` and ``--threads 2``,
each in the default mode and with ``--reproducible``. It prints, per mode, how far the
``--threads 1`` outputs are from the ``--threads 2`` ones (largest Warped intensity
difference, largest and mean 1Warp difference in mm, share of voxels more than 1 mm apart,
largest affine parameter difference) and the wall seconds of each run::

    python benchmarks/reproducibility.py /tmp/bench2/s01_to_s02_mono_2mm /tmp/bench2/s03_to_s04_multi_2mm
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def run(pair: Path, prefix: Path, threads: int, reproducible: bool) -> float:
    cmd = [sys.executable, "-m", "itk_odereg", "register", "-f", str(pair / "fixed.nii"), "-m",
           str(pair / "moving.nii"), "-o", str(prefix), "--threads", str(threads), "--quiet"]
    if "multi" in pair.name:
        cmd += ["--metric", "ngf"]
    if reproducible:
        cmd.append("--reproducible")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=str(prefix.parent))
    return time.perf_counter() - t0


def compare(a: str, b: str) -> dict:
    warped = [sitk.GetArrayFromImage(sitk.ReadImage(p + "Warped.nii.gz")) for p in (a, b)]
    warp = [sitk.GetArrayFromImage(sitk.ReadImage(p + "1Warp.nii.gz")) for p in (a, b)]
    affine = [np.array(sitk.ReadTransform(p + "0GenericAffine.mat").GetParameters()) for p in (a, b)]
    distance = np.linalg.norm(warp[0] - warp[1], axis=-1)
    return {"warped": float(np.abs(warped[0] - warped[1]).max()), "warp_max": float(distance.max()),
            "warp_mean": float(distance.mean()), "over_1mm": float(100 * (distance > 1).mean()),
            "affine": float(np.abs(affine[0] - affine[1]).max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", help="pair directories with fixed.nii and moving.nii")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="odereg-repro-"))
    print(f"{'pair':24s} {'mode':13s} {'Warped max':>10s} {'1Warp max mm':>12s} {'mean mm':>8s} "
          f"{'>1 mm %':>8s} {'affine max':>10s} {'s (1 thr)':>9s} {'s (2 thr)':>9s}")
    for pair in map(Path, args.pairs):
        for reproducible in (False, True):
            mode = "reproducible" if reproducible else "default"
            prefixes, seconds = [], []
            for threads in (1, 2):
                prefix = work / f"{pair.name}_{mode}_{threads}_"
                seconds.append(run(pair, prefix, threads, reproducible))
                prefixes.append(str(prefix))
            d = compare(*prefixes)
            print(f"{pair.name:24s} {mode:13s} {d['warped']:10.4g} {d['warp_max']:12.4g} {d['warp_mean']:8.4f} "
                  f"{d['over_1mm']:8.3f} {d['affine']:10.3g} {seconds[0]:9.1f} {seconds[1]:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
