"""Register a subject's T1 image to an MNI template, SimpleITK style, and carry its labels along.

Run with:
    python examples/register_mni_demo.py SUBJECT_T1 MNI_TEMPLATE OUTPUT_PREFIX [--labels SUBJECT_LABELS]

``MNI_TEMPLATE`` is any T1 template file you have, e.g. FSL's
``MNI152_T1_2mm_brain.nii.gz`` or a TemplateFlow ``tpl-MNI152NLin2009cAsym``
T1w image (nothing is downloaded here). The script uses
:class:`itk_odereg.filters.ODERegistrationMethod` (``Execute(fixed, moving)``
returns a ``sitk.Transform``, fixed = template, moving = subject) and writes

* ``<prefix>T1_in_MNI.nii.gz``: the subject on the template grid;
* ``<prefix>Composite.h5`` / ``<prefix>InverseComposite.h5``: subject <- MNI and MNI <- subject maps;
* ``<prefix>labels_in_MNI.nii.gz`` (with ``--labels``): labels resampled with nearest neighbour;
* ``<prefix>QC.png``: the QC figure.

Transforms map template (fixed) points to subject (moving) points in LPS mm,
so ``sitk.Resample(subject_image, template, transform)`` puts any image of the
subject in MNI space.
"""
from __future__ import annotations

import argparse
import os

import SimpleITK as sitk

from itk_odereg.filters import ODERegistrationMethod
from itk_odereg.io_utils import atomic_write
from itk_odereg.qc import qc_figure
from itk_odereg.transforms import displacement_field_image, write_composite_h5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subject", help="subject T1 image (moving)")
    parser.add_argument("template", help="MNI template T1 image (fixed)")
    parser.add_argument("output_prefix", help="output prefix, e.g. out/sub01_ (its directory is created)")
    parser.add_argument("--labels", help="subject label map to bring into MNI space (nearest neighbour)")
    parser.add_argument("--iterations", type=int, nargs="+", default=None, help="NODEO iterations per level")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    prefix = args.output_prefix
    os.makedirs(os.path.dirname(os.path.abspath(prefix + "x")), exist_ok=True)
    inputs = [args.subject, args.template, args.labels]
    template = sitk.ReadImage(args.template, sitk.sitkFloat32)
    subject = sitk.ReadImage(args.subject, sitk.sitkFloat32)

    method = ODERegistrationMethod()
    method.SetMetric("lncc")
    method.SetAffine("affine")
    method.SetDevice(args.device)
    if args.iterations:
        method.SetNumberOfIterations(args.iterations)
    method.ProgressOn()
    print(method)
    transform = method.Execute(template, subject)

    def write(image, name):
        path = prefix + name
        atomic_write(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True), inputs=inputs)
        print("wrote", path)

    write(sitk.Resample(subject, template, transform, sitk.sitkLinear, 0.0), "T1_in_MNI.nii.gz")
    print("wrote", write_composite_h5(prefix + "Composite.h5", transform, inputs=inputs))
    print("wrote", write_composite_h5(prefix + "InverseComposite.h5", method.GetInverseTransform(), inputs=inputs))
    if args.labels:
        labels = sitk.ReadImage(args.labels)
        write(sitk.Resample(labels, template, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID()),
              "labels_in_MNI.nii.gz")
    result = method.GetResult()
    qc = qc_figure(template, subject, result.warped, result.jacobian_determinant,
                   displacement_field_image(result.deformable_field_mm, result.fixed_grid), prefix + "QC.png",
                   moving_transform=(result.affine_matrix, result.affine_translation), inputs=inputs)
    print("wrote", qc)
    print(f"done in {result.timings['total']:.1f} s; folding {result.folding_percent:.3f}% of voxels")


if __name__ == "__main__":
    main()
