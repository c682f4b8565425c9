"""The main job, end to end: register a real brain (the MNI152 T1 template) to a known deformation of itself.

Run with:
    python examples/mni152_demo.py [--output mni152_demo] [--resolution 2.0] [--seed 0]

What it does:

1. Finds the ICBM152 2009a T1 template and its grey/white matter maps in the
   nilearn wheel (``nilearn/datasets/data/``): from an installed nilearn, or by
   fetching the wheel with ``pip download nilearn --no-deps`` (no other
   download, no nilearn install) into ``<output>/cache``.
2. Resamples the T1 to ``--resolution`` mm and makes the moving image by a
   known map S: a rotation (8 degrees), a shift (6 mm) and a random smooth
   B-spline deformation (control spacing ~ 40 mm, 3.5 mm standard deviation):
   moving(p) = fixed(S(p)). The correct registration T (fixed -> moving
   points) is then S^-1, so the map error at a fixed point p is |S(T(p)) - p|.
3. Runs ``itk-odereg register -f fixed -m moving -o <output>/mni_ --qc``, which
   writes the warped image, ANTs-named transforms (0GenericAffine.mat,
   1Warp.nii.gz, 1InverseWarp.nii.gz), Composite.h5, the Jacobian determinant
   and the QC figure.
4. Prints grey/white matter Dice and the map error inside the brain before and
   after registration, from the written Composite.h5 applied with SimpleITK.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import SimpleITK as sitk

from itk_odereg.cli import main as cli_main

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def find_template(cache: str) -> dict:
    """Paths of the template files: installed nilearn, a cached wheel, or a freshly downloaded wheel."""
    try:
        import nilearn

        data = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
        paths = {k: os.path.join(data, v) for k, v in TEMPLATE_FILES.items()}
        if all(os.path.exists(p) for p in paths.values()):
            return paths
    except ImportError:
        pass
    os.makedirs(cache, exist_ok=True)
    paths = {k: os.path.join(cache, v) for k, v in TEMPLATE_FILES.items()}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    wheels = glob.glob(os.path.join(cache, "nilearn-*.whl"))
    if not wheels:
        print("fetching the nilearn wheel (it ships the MNI152 template) with pip download ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", cache, "nilearn"], check=True)
        wheels = glob.glob(os.path.join(cache, "nilearn-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        for key, name in TEMPLATE_FILES.items():
            with wheel.open(f"nilearn/datasets/data/{name}") as src, open(paths[key], "wb") as dst:
                dst.write(src.read())
    return paths


def resample_isotropic(image: sitk.Image, spacing: float, interpolator=sitk.sitkLinear) -> sitk.Image:
    size = [int(round(s * sp / spacing)) for s, sp in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def known_map(fixed: sitk.Image, seed: int) -> sitk.Transform:
    """S: rotation + shift about the image centre, after a random smooth B-spline deformation."""
    rng = np.random.default_rng(seed)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    rigid = sitk.Euler3DTransform(center, *np.radians([8.0, -4.0, 5.0]), (6.0, -4.0, 3.0))
    extent = [s * sp for s, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(2, int(round(e / 40.0))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    bspline.SetParameters(rng.normal(0.0, 3.5, len(bspline.GetParameters())).tolist())
    return sitk.CompositeTransform([rigid, bspline])  # p -> rigid(bspline(p))


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return float(2 * (x & y).sum() / max(1, x.sum() + y.sum()))


def map_error(fixed: sitk.Image, brain: np.ndarray, S: sitk.Transform, T: sitk.Transform | None, stride=3) -> float:
    """Mean |S(T(p)) - p| over brain voxels (every ``stride``-th), mm."""
    errors = []
    for k, j, i in np.argwhere(brain)[::stride]:
        p = fixed.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        q = T.TransformPoint(p) if T is not None else p
        errors.append(np.linalg.norm(np.array(S.TransformPoint(q)) - np.array(p)))
    return float(np.mean(errors))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="mni152_demo", help="output folder (default ./mni152_demo)")
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel size of the demo images, mm")
    parser.add_argument("--seed", type=int, default=0, help="seed of the known deformation")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()

    paths = find_template(os.path.join(args.output, "cache"))
    fixed = resample_isotropic(sitk.ReadImage(paths["t1"], sitk.sitkFloat32), args.resolution)
    gm = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(paths["gm"], sitk.sitkFloat32), fixed))
    wm = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(paths["wm"], sitk.sitkFloat32), fixed))
    tissue = np.where(wm > 0.5, 2, np.where(gm > 0.5, 1, 0)).astype(np.uint8)
    labels = sitk.GetImageFromArray(tissue)
    labels.CopyInformation(fixed)

    S = known_map(fixed, args.seed)
    moving = sitk.Resample(fixed, fixed, S, sitk.sitkLinear, 0.0)
    moving_labels = sitk.Resample(labels, fixed, S, sitk.sitkNearestNeighbor, 0)
    fixed_path = os.path.join(args.output, "fixed_mni152_t1.nii.gz")
    moving_path = os.path.join(args.output, "moving_deformed.nii.gz")
    sitk.WriteImage(fixed, fixed_path)
    sitk.WriteImage(moving, moving_path)
    print(f"fixed: MNI152 T1 at {args.resolution} mm, size {fixed.GetSize()}; moving: fixed o S (known map)")

    prefix = os.path.join(args.output, "mni_")
    code = cli_main(["register", "-f", fixed_path, "-m", moving_path, "-o", prefix, "--qc"])
    if code != 0:
        return code

    T = sitk.ReadTransform(prefix + "Composite.h5")
    registered_labels = sitk.GetArrayFromImage(sitk.Resample(moving_labels, fixed, T, sitk.sitkNearestNeighbor, 0))
    before_labels = sitk.GetArrayFromImage(moving_labels)
    brain = tissue > 0
    jac = sitk.GetArrayFromImage(sitk.ReadImage(prefix + "JacobianDeterminant.nii.gz"))
    print("\n                      before    after")
    for name, label in (("grey matter Dice", 1), ("white matter Dice", 2)):
        print(f"{name:20s} {dice(tissue, before_labels, label):8.3f} {dice(tissue, registered_labels, label):8.3f}")
    print(f"{'map error (mm)':20s} {map_error(fixed, brain, S, None):8.2f} {map_error(fixed, brain, S, T):8.2f}")
    print(f"folded voxels (det J <= 0): {(jac[brain] <= 0).mean() * 100:.3f} % of the brain")
    print(f"outputs in {args.output}/ (QC figure: {prefix}QC.png); total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
