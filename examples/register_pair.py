"""Register two images with itk-odereg and write the results as ANTs does.

Run with:
    python examples/register_pair.py FIXED MOVING OUTPUT_PREFIX [--iterations 150 100 50] [--qc]

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

import SimpleITK as sitk

from itk_odereg.io_utils import atomic_write
from itk_odereg.registration.driver import register
from itk_odereg.transforms import displacement_field_image, write_ants_transforms, write_composite_h5


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

    result = register(args.fixed, args.moving, metric=args.metric, device=args.device,
                      iterations=tuple(args.iterations) if args.iterations else None, progress=True)

    warped_path = prefix + "Warped.nii.gz"
    atomic_write(warped_path, lambda tmp: sitk.WriteImage(result.warped, tmp), inputs=inputs)
    # ANTs files: the warp holds the deformable part only; the affine is in the .mat.
    grid = result.fixed_grid
    files = write_ants_transforms(
        prefix,
        (result.affine_matrix, result.affine_translation),
        displacement_field_image(result.deformable_field_mm, grid),
        displacement_field_image(result.inverse_field_mm, grid),
        inputs=inputs,
    )
    composite_path = write_composite_h5(prefix + "Composite.h5", result.transform, inputs=inputs)
    written = [warped_path, *files.fwdtransforms[::-1], files.inverse_warp, composite_path]
    if args.qc:
        from itk_odereg.qc import qc_figure

        written.append(qc_figure(args.fixed, args.moving, result.warped, result.jacobian_determinant,
                                 displacement_field_image(result.deformable_field_mm, grid), prefix + "QC.png",
                                 moving_transform=(result.affine_matrix, result.affine_translation)))

    print(f"done in {result.timings['total']:.1f} s "
          f"(affine {result.timings['affine']:.1f} s, NODEO {result.timings['nodeo']:.1f} s); "
          f"folding {result.folding_percent:.3f}% of voxels")
    print("ANTs fwdtransforms:", files.fwdtransforms)
    print("ANTs invtransforms:", files.invtransforms, "with whichtoinvert=[True, False]")
    for path in written:
        print("wrote", path)


if __name__ == "__main__":
    main()
