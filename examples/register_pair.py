"""Register two images with itk-odereg and write the results as ANTs does.

Run with:
    python examples/register_pair.py FIXED MOVING OUTPUT_PREFIX [--iterations 120 60 50] [--qc]

for example ``python examples/register_pair.py t1_a.nii.gz t1_b.nii.gz out/pair_``
writes ``out/pair_Warped.nii.gz``, ``out/pair_0GenericAffine.mat``,
``out/pair_1Warp.nii.gz``, ``out/pair_1InverseWarp.nii.gz`` and
``out/pair_Composite.h5`` (and ``out/pair_QC.png`` with ``--qc``). The moving
image is then brought onto the fixed grid by any of::

    sitk.Resample(moving, fixed, sitk.ReadTransform("out/pair_Composite.h5"))
    ants.apply_transforms(fixed, moving, ["out/pair_1Warp.nii.gz", "out/pair_0GenericAffine.mat"])
    antsApplyTransforms -i MOVING -r FIXED -t out/pair_1Warp.nii.gz -t out/pair_0GenericAffine.mat -o warped.nii.gz

Transforms map fixed points to moving points in LPS mm (ITK's convention).
The command line ``itk-odereg register`` does the same with more outputs.
"""
from __future__ import annotations

import argparse
import os

from itk_odereg.adapters.ants import write_registration
from itk_odereg.core.image import load_image
from itk_odereg.registration.engine import register_images
from itk_odereg.registration.options import RegistrationOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixed", help="fixed (reference) image file")
    parser.add_argument("moving", help="moving image file")
    parser.add_argument("output_prefix", help="output prefix, e.g. out/pair_ (its directory is created)")
    parser.add_argument("--metric", default="lncc", choices=["lncc", "mse", "mi", "ngf"])
    parser.add_argument("--iterations", type=int, nargs="+", default=None, help="NODEO iterations per level, coarse to fine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--qc", action="store_true", help="also write <prefix>QC.png")
    args = parser.parse_args()

    prefix = args.output_prefix
    os.makedirs(os.path.dirname(os.path.abspath(prefix + "x")), exist_ok=True)
    inputs = [args.fixed, args.moving]  # never overwritten by the writers below

    # Data flows one way: images as tensors on grids, the engine, then the ANTs adapter.
    fixed = load_image(args.fixed, "fixed")
    moving = load_image(args.moving, "moving")
    options = RegistrationOptions.create(metric=args.metric, device=args.device,
                                         iterations=tuple(args.iterations) if args.iterations else None)
    registration = register_images(fixed, moving, options, progress=True)

    # ANTs files: the warp holds the deformable part only; the affine is in the .mat.
    roles = ["warped", "affine", "warp", "inverse_warp", "composite"] + (["qc"] if args.qc else [])
    paths = write_registration(registration, prefix, fixed=fixed, moving=moving, roles=roles, inputs=inputs)

    timings = registration.timings
    print(f"affine {timings['affine']:.1f} s, NODEO {timings['nodeo']:.1f} s; "
          f"folding {registration.folding_percent:.3f}% of voxels")
    print("ANTs fwdtransforms:", [paths["warp"], paths["affine"]])
    print("ANTs invtransforms:", [paths["affine"], paths["inverse_warp"]], "with whichtoinvert=[True, False]")
    for path in paths.values():
        print("wrote", path)


if __name__ == "__main__":
    main()
