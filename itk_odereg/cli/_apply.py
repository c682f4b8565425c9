"""``itk-odereg apply``: resample an image through transform files in antsApplyTransforms order."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import CLIError, PROG, _check_file_integrity, _check_input_file, _read_image, _sitk_message, _write_image


_TRANSFORM_EXTENSIONS = (".mat", ".txt", ".tfm", ".h5", ".hdf5", ".xfm")


def _parse_transform_spec(spec: str) -> tuple[str, bool]:
    """``file`` or the ANTs form ``[file,1]`` -> (path, invert)."""
    text = spec.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        path, _, flag = inner.rpartition(",")
        if not path or flag.strip() not in ("0", "1"):
            raise CLIError(f"cannot parse transform '{spec}': expected [file,0] or [file,1]")
        return path.strip(), flag.strip() == "1"
    return text, False


def _read_transform(path: str, invert: bool, dimension: int) -> Any:
    import SimpleITK as sitk

    from ..io_utils import split_extension

    _check_input_file(path, "transform (-t)")
    ext = split_extension(path)[1].lower()
    if ext in _TRANSFORM_EXTENSIONS:
        try:
            tx = sitk.ReadTransform(path)
        except RuntimeError as err:
            raise CLIError(f"could not read transform '{path}': {_sitk_message(err)}") from None
        if tx.GetDimension() != dimension:
            raise CLIError(f"transform '{path}' is {tx.GetDimension()}D but the reference image is {dimension}D")
        if invert:
            try:
                tx = tx.GetInverse()
            except RuntimeError as err:
                raise CLIError(f"transform '{path}' cannot be inverted: {_sitk_message(err)}") from None
        return tx
    _check_file_integrity(path, "transform (-t)")
    try:
        field = sitk.ReadImage(path)
    except RuntimeError as err:
        raise CLIError(f"'{path}' is neither a transform file ({', '.join(_TRANSFORM_EXTENSIONS)}) nor a readable "
                       f"displacement field image: {_sitk_message(err)}") from None
    if field.GetNumberOfComponentsPerPixel() != field.GetDimension() or field.GetDimension() != dimension:
        raise CLIError(f"'{path}' is not a {dimension}D displacement field ({field.GetDimension()}D image with "
                       f"{field.GetNumberOfComponentsPerPixel()} components per voxel)")
    if invert:
        raise CLIError(f"cannot invert the displacement field '{path}': use the matching *InverseWarp file instead")
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def _cmd_apply(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..io_utils import check_not_inputs, check_writable

    specs = [_parse_transform_spec(s) for s in args.transform]
    if args.invert is not None:
        if len(args.invert) != len(specs):
            raise CLIError(f"--invert takes one 0/1 per transform: {len(specs)} transform(s), {len(args.invert)} value(s)")
        specs = [(path, bool(flag) or inv) for (path, inv), flag in zip(specs, args.invert)]
    inputs = [args.input, args.reference] + [path for path, _ in specs]
    try:
        check_not_inputs([args.output], inputs, PROG)
    except ValueError as err:
        raise CLIError(str(err).split(": ", 1)[-1]) from None
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"the output directory does not exist: '{out_dir}'")
    try:
        check_writable([args.output], PROG, image_format=True)
    except (OSError, ValueError) as err:
        raise CLIError(str(err).split(": ", 1)[-1]) from None
    image = _read_image(args.input, "input image (-i)")
    reference = _read_image(args.reference, "reference image (-r)")
    d = reference.GetDimension()
    _check_output_grid(reference, args.output)
    if image.GetDimension() != d:
        raise CLIError(f"input image is {image.GetDimension()}D but the reference image is {d}D")
    transforms = [_read_transform(path, inv, d) for path, inv in specs]
    # antsApplyTransforms maps a reference point p through the first listed transform first:
    # "-t W -t A" samples the input at A(W(p)). sitk.CompositeTransform applies the last
    # added first, so it takes the list reversed: CompositeTransform([A, W]) is p -> A(W(p)).
    composite = sitk.CompositeTransform(transforms[::-1])
    if args.interpolation != "nearest" and _is_integer_image(image):
        sys.stderr.write(f"{PROG} apply: warning: '{args.input}' has integer voxels "
                         f"({image.GetPixelIDTypeAsString()}); {args.interpolation} interpolation writes blended "
                         "float values. If it is a label map, pass --interpolation nearest\n")
    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    if args.interpolation == "nearest":
        pixel = image.GetPixelID()
    elif image.GetNumberOfComponentsPerPixel() > 1:
        pixel = sitk.sitkVectorFloat32
    else:
        pixel = sitk.sitkFloat32
    out = sitk.Resample(image, reference, composite, interpolators[args.interpolation], args.default_value, pixel)
    _write_image(out, args.output, inputs)
    return 0


def _is_integer_image(image) -> bool:
    import SimpleITK as sitk

    integer = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
               sitk.sitkUInt64, sitk.sitkInt64}
    return image.GetPixelID() in integer


def _check_output_grid(reference, output: str) -> None:
    """A NIfTI output cannot hold a sheared reference grid: ITK would write the nearest rotation."""
    from ..core.grid import ImageGrid
    from ..core.image import ORTHONORMAL_TOLERANCE, direction_error

    if not output.lower().endswith((".nii", ".nii.gz")):
        return
    error = direction_error(ImageGrid.from_sitk(reference).direction)
    if error > ORTHONORMAL_TOLERANCE:
        raise CLIError(f"the reference image (-r) has a direction matrix that is not orthonormal (max |D^T D - I| = "
                       f"{error:.3g}); a NIfTI output ('{output}') cannot hold that grid (ITK would write the nearest "
                       "rotation, moving every voxel): write .nrrd or .mha instead, or resample the reference first")
