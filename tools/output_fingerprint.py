"""Fingerprint every output of `itk-odereg register` on a few fixed pairs, to prove a refactor changed nothing.

Runs the CLI (defaults, seed 0, 2 threads) on each pair and prints one SHA-256 per output
file, taken over the decoded voxels and the grid (size, spacing, origin, direction) for
images, and over the parameters for transforms, so that compression or file headers do
not matter. Run it before and after a change and compare the two listings::

    python tools/output_fingerprint.py /tmp/bench2 > before.txt
    ...change...
    python tools/output_fingerprint.py /tmp/bench2 > after.txt
    diff before.txt after.txt

PAIRS_DIR holds the pairs `benchmarks/accuracy.py --work-dir` prepares
(`s01_to_s02_mono_2mm/{fixed,moving}.nii`, ...). A third pair is derived from the first:
its moving image resampled onto an oblique, anisotropic grid (1.5 x 2 x 2.5 mm, rotated 12
degrees), so that the different-grids path is covered too.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np
import SimpleITK as sitk

PAIRS = ("s01_to_s02_mono_2mm", "s03_to_s04_multi_2mm")


def _image_digest(path: str) -> str:
    image = sitk.ReadImage(path)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    for values in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        h.update(np.asarray(values, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _transform_digest(path: str) -> str:
    transform = sitk.ReadTransform(path)
    h = hashlib.sha256()
    stack = [transform]
    while stack:
        tx = stack.pop(0)
        if tx.GetName() == "CompositeTransform":
            composite = sitk.CompositeTransform(tx)
            stack.extend(composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms()))
            continue
        h.update(np.asarray(tx.GetParameters(), dtype=np.float64).tobytes())
        h.update(np.asarray(tx.GetFixedParameters(), dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _oblique_moving(source: str, target: str) -> None:
    image = sitk.ReadImage(source)
    rotation = sitk.VersorTransform((0.3, 0.2, 0.93), np.deg2rad(12.0))
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = (1.5, 2.0, 2.5)
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    size = [int(round(e / s)) for e, s in zip(extent, spacing)]
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    half = direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin((np.asarray(centre) - half).tolist())
    sitk.WriteImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32), target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", metavar="DIR", help="write the outputs into DIR (created) and keep them")
    args = parser.parse_args()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="odereg_fingerprint_") as scratch:
        work = args.keep or scratch
        oblique = os.path.join(work, "moving_oblique.nii")
        first = os.path.join(args.pairs_dir, PAIRS[0])
        _oblique_moving(os.path.join(first, "moving.nii"), oblique)
        runs = [(name, os.path.join(args.pairs_dir, name, "fixed.nii"), os.path.join(args.pairs_dir, name, "moving.nii"),
                 ["--metric", "ngf"] if "multi" in name else []) for name in PAIRS]
        runs.append((PAIRS[0] + "_oblique_moving", os.path.join(first, "fixed.nii"), oblique, []))
        for name, fixed, moving, extra in runs:
            prefix = os.path.join(work, name + "_")
            command = [sys.executable, "-m", "itk_odereg", "register", "-f", fixed, "-m", moving, "-o", prefix,
                       "--quiet", "--seed", "0", "--threads", str(args.threads), *extra]
            subprocess.run(command, check=True)
            for file in sorted(f for f in os.listdir(work) if f.startswith(name + "_")):
                path = os.path.join(work, file)
                digest = _transform_digest(path) if file.endswith((".mat", ".h5")) else _image_digest(path)
                print(f"{file:60s} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
