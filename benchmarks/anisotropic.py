"""Thick slices: an isotropic pair against its thick-slice copy, side by side in one run.

For each pair, the fixed image is synthesized at 1 mm and then "acquired" again with thick
slices: blurred along z with a Gaussian whose full width at half maximum is the slice
thickness, and resampled onto a 1 x 1 x ``--slice-mm`` grid over the same box, as a 2D
multi-slice MRI sequence would record it. ``itk-odereg register`` (defaults, as a user runs
it) registers the moving image to the isotropic fixed image and to its thick copy. Both
results are scored on the *isotropic* fixed label map: the moving labels are resampled
through the written ``Composite.h5`` by ``sitk.Resample`` (nearest neighbour), so the
thick-slice transform is judged where the anatomy really is, by ITK, not by our code.

``--baseline PYTHONPATH`` runs the same cases with another checkout of itk-odereg too
(for example the commit before a change), so that before and after share one run::

    git worktree add /tmp/before <commit>   # and build it there (python setup.py build_ext --inplace)
    python benchmarks/anisotropic.py --label-maps ../shared/data/label_maps --pairs 3 --baseline /tmp/before

Prints one line per case and run, then the mean Dice per setting.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _synth  # noqa: E402


def thick_copy(image: sitk.Image, slice_mm: float) -> sitk.Image:
    """``image`` as a thick-slice acquisition: z blurred (FWHM = ``slice_mm``) and resampled to ``slice_mm`` slices."""
    sigma = slice_mm / 2.3548
    blurred = sitk.RecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma, False, 2)  # direction 2: z
    size = list(image.GetSize())
    spacing = list(image.GetSpacing())
    extent_z = size[2] * spacing[2]
    n_z = max(2, int(round(extent_z / slice_mm)))
    new_spacing = [spacing[0], spacing[1], extent_z / n_z]
    # Same box (outer voxel edges), so the two fixed images cover the same anatomy.
    origin_index = [0.0, 0.0, (new_spacing[2] / spacing[2] - 1.0) / 2.0]
    origin = image.TransformContinuousIndexToPhysicalPoint(origin_index)
    ref = sitk.Image([size[0], size[1], n_z], sitk.sitkFloat32)
    ref.SetSpacing(new_spacing)
    ref.SetOrigin(origin)
    ref.SetDirection(image.GetDirection())
    return sitk.Resample(blurred, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def run_cli(pythonpath: str | None, fixed: Path, moving: Path, prefix: Path, threads: int) -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "itk_odereg", "register", "-f", str(fixed), "-m", str(moving), "-o", str(prefix),
           "--threads", str(threads), "--quiet"]
    t0 = time.perf_counter()
    # Run outside the repository: `python -m` puts the working directory first on sys.path,
    # which would shadow the --baseline PYTHONPATH.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(prefix.parent))
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return seconds, done.stderr.strip()


def score(composite: Path, moving_labels: sitk.Image, fixed_labels: sitk.Image, labels) -> float:
    transform = sitk.ReadTransform(str(composite))
    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0,
                           moving_labels.GetPixelID())
    dice = _synth.dice_per_structure(sitk.GetArrayFromImage(fixed_labels), sitk.GetArrayFromImage(warped), labels)
    return float(np.mean(list(dice.values())))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label-maps", required=True, help="folder with subjectNN.nii.gz label maps")
    p.add_argument("--pairs", type=int, default=3, help="number of inter-subject pairs (default 3)")
    p.add_argument("--slice-mm", type=float, default=5.0, help="slice thickness of the thick copy, mm (default 5)")
    p.add_argument("--task", choices=("mono", "multi"), default="mono")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", default=None, metavar="PYTHONPATH",
                   help="also run the cases with the itk-odereg found on this PYTHONPATH (an older checkout)")
    p.add_argument("--work-dir", default=None, help="keep images and outputs here")
    args = p.parse_args(argv)

    label_dir = Path(args.label_maps)
    subjects = sorted(int(f.name[7:9]) for f in label_dir.glob("subject[0-9][0-9].nii*"))
    pairs = [(subjects[2 * i], subjects[2 * i + 1]) for i in range(min(args.pairs, len(subjects) // 2))]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="odereg-aniso-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = [("current", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    rows = []
    for moving_subject, fixed_subject in pairs:
        pair = _synth.prepare_pair(label_dir, moving_subject, fixed_subject, args.task, 1.0, seed=0)
        case_dir = work / f"s{moving_subject:02d}_to_s{fixed_subject:02d}"
        case_dir.mkdir(exist_ok=True)
        fixed_iso, moving = case_dir / "fixed_iso.nii.gz", case_dir / "moving.nii.gz"
        fixed_thick = case_dir / "fixed_thick.nii.gz"
        sitk.WriteImage(pair.fixed, str(fixed_iso))
        sitk.WriteImage(pair.moving, str(moving))
        sitk.WriteImage(thick_copy(pair.fixed, args.slice_mm), str(fixed_thick))
        labels = _synth.structures_present(sitk.GetArrayFromImage(pair.fixed_labels),
                                           sitk.GetArrayFromImage(pair.moving_labels),
                                           [l for l in np.unique(sitk.GetArrayFromImage(pair.fixed_labels))
                                            if _synth.is_brain_structure(int(l))])
        for run_name, pythonpath in runs:
            for case, fixed in (("isotropic", fixed_iso), (f"thick {args.slice_mm:g} mm", fixed_thick)):
                prefix = case_dir / f"{run_name}_{case.split()[0]}_"
                seconds, log = run_cli(pythonpath, fixed, moving, prefix, args.threads)
                dice = score(Path(str(prefix) + "Composite.h5"), pair.moving_labels, pair.fixed_labels, labels)
                rows.append({"pair": case_dir.name, "run": run_name, "case": case, "dice": dice, "seconds": seconds})
                print(f"{case_dir.name}  {run_name:8s}  {case:14s}  Dice {dice:.3f}  {seconds:6.1f} s"
                      + (f"  ({log.splitlines()[-1]})" if log else ""), flush=True)
    print("\nmean Dice on the isotropic fixed labels (the moving labels through each Composite.h5, sitk.Resample):")
    for run_name, _ in runs:
        for case in sorted({r["case"] for r in rows}):
            values = [r["dice"] for r in rows if r["run"] == run_name and r["case"] == case]
            secs = [r["seconds"] for r in rows if r["run"] == run_name and r["case"] == case]
            print(f"  {run_name:8s} {case:14s} {np.mean(values):.3f} ± {np.std(values):.3f}  ({len(values)} pairs, "
                  f"{np.mean(secs):.1f} s)")
    (work / "anisotropic.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
