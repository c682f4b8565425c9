"""``itk-odereg``: command line front end (``register`` and ``apply``).

``itk-odereg register`` runs the engine (:func:`itk_odereg.registration.driver.register`)
on two image files and writes the results with the file names ANTs uses;
``itk-odereg apply`` resamples an image through a list of transform files in
``antsApplyTransforms`` order. Run ``itk-odereg --help`` or
``itk-odereg register --help`` for the details.

Start-up: building the parser and ``--help`` need argparse only; torch,
SimpleITK and the engine are imported inside the command functions.

Exit status: 0 on success, 2 for usage errors (argparse), 1 for bad inputs,
unreadable files or failed writes, reported as one line
``itk-odereg: error: ...`` on stderr (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser", "register_outputs"]

PROG = "itk-odereg"

_DESCRIPTION = """\
Neural-ODE (NODEO) deformable image registration for ITK, SimpleITK and ANTs workflows.

Conventions:
  * Physical space is ITK's: LPS millimetres (x grows to the patient's Left,
    y to Posterior, z to Superior), whatever orientation the files store.
  * A transform maps points of the fixed (reference) image to points of the
    moving image, so resampling the moving image through it puts it on the
    fixed grid (as ITK, SimpleITK and antsApplyTransforms do).
  * Transform lists follow antsApplyTransforms: the LAST listed transform is
    applied to the input image first, i.e. a point p of the reference grid goes
    through the FIRST listed transform first. `register` writes the forward list
    "<prefix>1Warp.nii.gz <prefix>0GenericAffine.mat" (p -> A(W(p))) and the
    inverse list "<prefix>0GenericAffine.mat <prefix>1InverseWarp.nii.gz" with
    the affine inverted (--invert 1 0, or "[<prefix>0GenericAffine.mat,1]").
  * Warp files are ANTs displacement fields (5D NIfTI, vector intent, LPS mm
    components) holding the deformable part only; Composite.h5 holds the whole
    forward map (affine + warp) for ITK, SimpleITK, ANTs and 3D Slicer.
"""

_EPILOG = """\
examples:
  # register, writing out/sub01_Warped.nii.gz, out/sub01_0GenericAffine.mat, ...
  itk-odereg register -f template.nii.gz -m sub01_T1.nii.gz -o out/sub01_ --qc

  # faster, coarser: fewer iterations, rigid pre-alignment, 3 mm working grid
  itk-odereg register -f fixed.nii.gz -m moving.nii.gz -o out/pair_ \\
      --affine rigid --iterations 100 50 --resolution 3

  # apply the result to a label map (nearest neighbour), as antsApplyTransforms would
  itk-odereg apply -i sub01_labels.nii.gz -r template.nii.gz -o out/labels_in_template.nii.gz \\
      -t out/sub01_1Warp.nii.gz out/sub01_0GenericAffine.mat --interpolation nearest

  # bring the template onto the subject's grid with the inverse
  itk-odereg apply -i template.nii.gz -r sub01_T1.nii.gz -o out/template_in_sub01.nii.gz \\
      -t out/sub01_0GenericAffine.mat out/sub01_1InverseWarp.nii.gz --invert 1 0

  # the same with antsApplyTransforms (same files, same order)
  antsApplyTransforms -i sub01_T1.nii.gz -r template.nii.gz -o warped.nii.gz \\
      -t out/sub01_1Warp.nii.gz -t out/sub01_0GenericAffine.mat
"""

_REGISTER_EPILOG = """\
outputs (PREFIX is concatenated, as in ANTs: -o out/sub01_ gives out/sub01_Warped.nii.gz):
  PREFIXWarped.nii.gz              moving image on the fixed grid (float32, linear)
  PREFIXInverseWarped.nii.gz       fixed image on the moving grid, through the inverse
  PREFIX0GenericAffine.mat         affine (ITK/ANTs MATLAB format), fixed -> moving points
  PREFIX1Warp.nii.gz               deformable part, ANTs displacement field on the fixed grid
  PREFIX1InverseWarp.nii.gz        its inverse
  PREFIXComposite.h5               whole forward map [affine, warp] (ITK HDF5)
  PREFIXInverseComposite.h5        whole inverse map
  PREFIXJacobianDeterminant.nii.gz det(I + Du) of the deformable part
  PREFIXQC.png                     QC figure (with --qc)
No input file is ever overwritten; every output is written atomically.
"""

_APPLY_EPILOG = """\
Transforms are listed as for antsApplyTransforms: the last listed is applied
to the input image first (a reference point p goes through the first listed
first: "-t warp.nii.gz affine.mat" samples the input at affine(warp(p))).
Files ending in .mat, .txt, .tfm, .h5 or .hdf5 are read with
SimpleITK.ReadTransform; image files (e.g. *Warp.nii.gz) are displacement
fields (LPS mm). Invert a transform with --invert (one
0/1 per transform) or the ANTs syntax -t "[file.mat,1]". Displacement fields
cannot be inverted: use the matching *InverseWarp.nii.gz.
"""

_TRANSFORM_EXTENSIONS = (".mat", ".txt", ".tfm", ".h5", ".hdf5", ".xfm")


class CLIError(Exception):
    """A user error reported as one line and exit status 1."""


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``itk-odereg`` argument parser (subcommands ``register`` and ``apply``)."""
    from ._version import __version__

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not reset "--debug" given before it.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")

    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{register,apply,train,export}")
    sub.required = True

    reg = sub.add_parser(
        "register", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="register a moving image to a fixed image (affine + NODEO)",
        description="Register MOVING to FIXED: affine pre-alignment, then a NODEO deformable stage.\n"
        "Transforms map fixed points to moving points in LPS mm.",
        epilog=_REGISTER_EPILOG,
    )
    reg.add_argument("-f", "--fixed", required=True, metavar="FIXED", help="fixed (reference) image file, 2D or 3D scalar")
    reg.add_argument("-m", "--moving", required=True, metavar="MOVING", help="moving image file (any grid)")
    reg.add_argument("-o", "--output", required=True, metavar="PREFIX",
                     help="output prefix, e.g. out/sub01_ (directory must exist)")
    reg.add_argument("--method", choices=["nodeo", "msodenet", "msodenet+nodeo"], default="nodeo",
                     help="deformable stage: nodeo (per-pair neural-ODE optimization; default), msodenet (a "
                          "trained MS-ODENet model, see --model; a few solver steps, 3D only), msodenet+nodeo "
                          "(MS-ODENet first, then NODEO refines)")
    reg.add_argument("--model", default="bspline", metavar="NAME|FILE",
                     help="MS-ODENet model for the msodenet methods: a .pt file written by `itk-odereg train`, "
                          "or a shipped name bspline (default; after the affine stage), rigid+bspline (for "
                          "unaligned inputs in any orientation, with --affine none), rigid")
    reg.add_argument("--metric", choices=["lncc", "mse", "mi", "ngf"], default="lncc",
                     help="similarity: lncc (local NCC, same contrast; default), mse, "
                          "ngf (normalized gradient fields: different contrasts such as T1 to T2, recommended; "
                          "the affine stage then uses mi), mi (Mattes mutual information, both stages)")
    reg.add_argument("--affine", choices=["affine", "rigid", "none"], default="affine",
                     help="pre-alignment (default affine: centres of mass, rigid, affine)")
    reg.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="torch device (default cpu)")
    reg.add_argument("--iterations", type=int, nargs="+", metavar="N",
                     help="NODEO iterations per pyramid level, coarse to fine, 1 to 3 values (default 150 100 50)")
    reg.add_argument("--steps", type=int, default=4,
                     help="Euler steps on t in [0, 1] while NODEO optimizes (default 4; the written map "
                          "integrates the optimized flow with at least 4)")
    reg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    reg.add_argument("--resolution", type=_resolution, default="auto", metavar="MM",
                     help="NODEO working grid spacing in mm (default auto: the fixed image's own grid, "
                          "or 1 mm for images finer than 1 mm; 0: always the fixed grid)")
    reg.add_argument("--threads", type=int, default=None, metavar="N",
                     help="CPU threads of torch and ITK (default: torch's and ITK's defaults)")
    reg.add_argument("--qc", action="store_true", help="also write PREFIXQC.png")
    reg.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    reg.set_defaults(func=_cmd_register)

    app = sub.add_parser(
        "apply", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="resample an image through transforms (antsApplyTransforms order)",
        description="Resample IMAGE onto the grid of REFERENCE through a list of transforms.",
        epilog=_APPLY_EPILOG,
    )
    app.add_argument("-i", "--input", required=True, metavar="IMAGE", help="image to resample")
    app.add_argument("-r", "--reference", required=True, metavar="REFERENCE", help="image defining the output grid")
    app.add_argument("-t", "--transform", required=True, nargs="+", action="extend", metavar="TRANSFORM",
                     help="transform files in antsApplyTransforms order (last listed applied to the image first); "
                          "may be repeated: -t a -t b")
    app.add_argument("-o", "--output", required=True, metavar="OUT", help="output image file")
    app.add_argument("--interpolation", choices=["linear", "nearest", "bspline"], default="linear",
                     help="interpolator (default linear; nearest keeps the pixel type, for label maps)")
    app.add_argument("--invert", type=int, nargs="+", choices=[0, 1], metavar="0|1",
                     help="one 0/1 per transform: 1 inverts it (affine files only)")
    app.add_argument("--default-value", type=float, default=0.0, help="value outside the input (default 0)")
    app.set_defaults(func=_cmd_apply)

    trn = sub.add_parser(
        "train", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train an MS-ODENet model on brain label maps",
        description="Train MS-ODENet without labels or ground truth: images with random per-label contrasts are\n"
        "synthesized from label maps (subjectNN.nii.gz); the loss is a modality-independent similarity,\n"
        "the recovery of random known transformations and a smoothness penalty. Writes MODEL (.pt), a\n"
        "resumable checkpoint MODEL.ckpt and a loss log MODEL.log.jsonl.",
        epilog="example:\n  itk-odereg train --label-maps data/label_maps --output bspline.pt --resolution 2\n"
        "  itk-odereg train --label-maps data/label_maps --output rigid.pt --parameterization rigid\n"
        "  itk-odereg train --label-maps data/label_maps --output dense.pt --parameterization dense",
    )
    trn.add_argument("--label-maps", required=True, metavar="DIR", help="folder with subjectNN.nii.gz label maps")
    trn.add_argument("--output", required=True, metavar="MODEL", help="model file to write (.pt)")
    trn.add_argument("--parameterization", choices=["bspline", "dense", "rigid"], default="bspline",
                     help="transformation the model learns: bspline (default), dense (a displacement per voxel, "
                          "UNet), rigid")
    trn.add_argument("--resolution", type=float, default=2.0, metavar="MM", help="training grid spacing (default 2)")
    trn.add_argument("--iterations", type=int, default=3000, help="training iterations (default 3000)")
    trn.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 9)), metavar="N",
                     help="training subjects (default 1..8; keep the others for validation)")
    trn.add_argument("--learning-rate", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    trn.add_argument("--metric", choices=["ngf", "mi", "lncc", "mse"], default="ngf",
                     help="similarity of the unsupervised term (default ngf, modality independent)")
    trn.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="torch device (default cpu)")
    trn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    trn.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    trn.add_argument("--restart", action="store_true", help="ignore an existing checkpoint instead of resuming")
    trn.set_defaults(func=_cmd_train)

    exp = sub.add_parser(
        "export", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="export an MS-ODENet model to TorchScript or torch.export",
        description="Write a trained model as a TorchScript module (.pt) or a torch.export program (.pt2).\n"
        "forward(fixed, moving) takes float tensors [1,1,D,H,W] on one grid (intensities in [0, 1]) and\n"
        "returns the displacement [1,3,D,H,W] in voxels (tensor axes z, y, x; fixed to moving:\n"
        "warp(moving, u) ~ fixed). Load it with torch.jit.load after\n"
        "torch.ops.load_library(itk_odereg.ops.library_path()); itk_odereg itself is not needed.",
    )
    exp.add_argument("--model", default="bspline", metavar="NAME|FILE",
                     help="a .pt file written by `itk-odereg train`, or a shipped name bspline (default), rigid, "
                          "rigid+bspline")
    exp.add_argument("-o", "--output", required=True, metavar="FILE", help="output file: .pt (TorchScript) or .pt2")
    exp.add_argument("--shape", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                     help="example input size for torch.export (.pt2; default: the model's training box)")
    exp.set_defaults(func=_cmd_export)
    return parser


# ---------------------------------------------------------------------------- train / export


def _cmd_train(args: argparse.Namespace) -> int:
    from .msodenet.train import TrainSettings, train

    if args.iterations < 1:
        raise CLIError(f"--iterations must be at least 1, got {args.iterations}")
    if args.resolution <= 0:
        raise CLIError(f"--resolution must be positive (mm), got {args.resolution}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"the output directory does not exist: '{out_dir}'")
    settings = TrainSettings(parameterization=args.parameterization, resolution_mm=args.resolution,
                             iterations=args.iterations, learning_rate=args.learning_rate, metric=args.metric,
                             train_subjects=tuple(args.subjects), seed=args.seed, threads=args.threads,
                             device=args.device)
    try:
        train(args.label_maps, args.output, settings, resume=not args.restart,
              log=lambda line: sys.stderr.write(line + "\n"))
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .msodenet.export import export_model

    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"the output directory does not exist: '{out_dir}'")
    if not args.output.endswith((".pt", ".pt2")):
        raise CLIError(f"--output must end in .pt (TorchScript) or .pt2 (torch.export), got '{args.output}'")
    try:
        export_model(args.model, args.output, shape=args.shape)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    sys.stderr.write(f"{PROG} export: wrote {args.output}\n")
    return 0


# ---------------------------------------------------------------------------- register


def register_outputs(prefix: str, qc: bool = False) -> dict[str, str]:
    """The files ``itk-odereg register -o PREFIX`` writes, by role (:data:`itk_odereg.adapters.ants.ANTS_FILE_NAMES`).

    Args:
        prefix: output prefix (concatenated, as ANTs does).
        qc: include the QC figure.

    Returns:
        dict role -> path: ``warped``, ``inverse_warped``, ``affine``, ``warp``,
        ``inverse_warp``, ``composite``, ``inverse_composite``, ``jacobian`` [, ``qc``].
    """
    from .adapters.ants import ANTS_FILE_NAMES, ants_output_paths

    return ants_output_paths(prefix, [role for role in ANTS_FILE_NAMES if qc or role != "qc"])


def _check_prefix(prefix: str) -> None:
    if prefix == "":
        raise CLIError("the output prefix (-o) is empty")
    if os.path.isdir(prefix) and not prefix.endswith(os.sep):
        raise CLIError(f"the output prefix '{prefix}' is a directory; end it with '{os.sep}' to write into it "
                       f"(e.g. '{os.path.join(prefix, '')}')")
    directory = os.path.dirname(os.path.abspath(prefix + "x"))
    if not os.path.isdir(directory):
        raise CLIError(f"the output directory does not exist: '{directory}' (create it first, e.g. mkdir -p)")


def _resolution(text: str):
    """--resolution: 'auto' or a number of mm (argparse type)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of mm, 0 or auto, got {text!r}") from None


def _check_input_file(path: str, option: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{option} file not found: '{path}'")
    if os.path.isdir(path):
        raise CLIError(f"{option} is a directory, not a file: '{path}'")


def _write_image(image: Any, path: str, inputs: Sequence[Any]) -> None:
    from .io_utils import write_image

    # Atomic; .nii.gz gzipped at zlib level 1 (io_utils.write_image).
    write_image(image, path, inputs=inputs, caller=PROG)


def _read_input(path: str, option: str) -> Any:
    """Read an input image once; the engine and the outputs (inverse warp, QC) reuse it."""
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(path)
    except RuntimeError as err:
        raise CLIError(f"{option} could not be read as an image from '{path}': {_sitk_message(err)}") from None


#: option keyword -> the command line flag that sets it, for error messages.
_FLAGS = {"method": "--method", "model": "--model", "metric": "--metric", "affine": "--affine", "device": "--device",
          "iterations": "--iterations", "steps": "--steps", "seed": "--seed", "resolution_mm": "--resolution"}


def _cli_message(err: BaseException) -> str:
    """An engine or options error in the command line's terms: flags and -f/-m instead of Python names."""
    text = str(err).replace("register(): 'fixed'", "fixed image (-f)").replace("register(): 'moving'", "moving image (-m)")
    for key, flag in _FLAGS.items():
        text = text.replace(f"register(): '{key}'", flag).replace(f"register(): invalid {key}", f"invalid {flag}")
    text = text.replace("register(): ", "")
    return text.splitlines()[0] if text else type(err).__name__


def _cmd_register(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .adapters.ants import write_registration
    from .core.image import load_image
    from .io_utils import check_not_inputs
    from .registration.engine import register_images
    from .registration.options import RegistrationOptions

    _check_input_file(args.fixed, "fixed image (-f)")
    _check_input_file(args.moving, "moving image (-m)")
    _check_prefix(args.output)
    if args.iterations is not None and not 1 <= len(args.iterations) <= 3:
        raise CLIError(f"--iterations takes 1 to 3 values (coarse to fine), got {len(args.iterations)}")
    if args.resolution != "auto" and args.resolution < 0:
        raise CLIError(f"--resolution must be positive (mm), 0 for the fixed grid or auto, got {args.resolution}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    try:
        options = RegistrationOptions.create(
            "register()", method=args.method, model=args.model, metric=args.metric,
            affine=None if args.affine == "none" else args.affine, device=args.device,
            iterations=tuple(args.iterations) if args.iterations else None, steps=args.steps, seed=args.seed,
            resolution_mm=args.resolution if args.resolution == "auto" else (args.resolution or None))
    except (ValueError, TypeError) as err:
        raise CLIError(_cli_message(err)) from None
    outputs = register_outputs(args.output, args.qc)
    inputs = [args.fixed, args.moving]
    try:
        check_not_inputs(outputs.values(), inputs, PROG)
    except ValueError as err:
        raise CLIError(str(err).split(": ", 1)[-1] + " (choose another -o prefix)") from None

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    start = time.perf_counter()
    # Each input is read once: the engine, the inverse-warped image and the QC figure share it.
    try:
        fixed = load_image(_read_input(args.fixed, "fixed image (-f)"), "fixed", "register()")
        moving = load_image(_read_input(args.moving, "moving image (-m)"), "moving", "register()")
        t_read = time.perf_counter() - start
        registration = register_images(fixed, moving, options, progress=not args.quiet)
    except (ValueError, TypeError) as err:
        raise CLIError(_cli_message(err)) from err
    t_write = time.perf_counter()
    write_registration(registration, args.output, fixed=fixed, moving=moving, roles=tuple(outputs), inputs=inputs,
                       threads=args.threads, caller=PROG)
    timings = {"load": t_read, **registration.timings}
    timings["write"] = time.perf_counter() - t_write
    timings["total"] = time.perf_counter() - start
    if not args.quiet:
        det = registration.jacobian_determinant
        out = sys.stdout
        out.write(f"{PROG} register: done in {timings['total']:.1f} s\n")
        out.write("  stage timings (s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in timings.items() if k != "total") + "\n")
        out.write(f"  affine determinant {registration.affine_determinant:.4f}; det J of the warp in "
                  f"[{float(det.min()):.3f}, {float(det.max()):.3f}]; folding {registration.folding_percent:.3f}% of voxels\n")
        out.write("  wrote:\n")
        for path in outputs.values():
            out.write(f"    {path}\n")
        out.flush()
    return 0


# ---------------------------------------------------------------------------- apply


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

    from .io_utils import split_extension

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


def _sitk_message(err: BaseException) -> str:
    msg = str(err)
    if "sitk::ERROR:" in msg:
        return msg.split("sitk::ERROR:", 1)[-1].strip().splitlines()[0]
    lines = [line for line in msg.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _read_image(path: str, option: str) -> Any:
    import SimpleITK as sitk

    _check_input_file(path, option)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as err:
        raise CLIError(f"{option} could not be read as an image: '{path}': {_sitk_message(err)}") from None
    if image.GetDimension() not in (2, 3):
        raise CLIError(f"{option} '{path}' is a {image.GetDimension()}D image; only 2D and 3D images are supported")
    return image


def _cmd_apply(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .io_utils import check_not_inputs

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
    image = _read_image(args.input, "input image (-i)")
    reference = _read_image(args.reference, "reference image (-r)")
    d = reference.GetDimension()
    if image.GetDimension() != d:
        raise CLIError(f"input image is {image.GetDimension()}D but the reference image is {d}D")
    transforms = [_read_transform(path, inv, d) for path, inv in specs]
    # antsApplyTransforms maps a reference point p through the first listed transform first:
    # "-t W -t A" samples the input at A(W(p)). sitk.CompositeTransform applies the last
    # added first, so it takes the list reversed: CompositeTransform([A, W]) is p -> A(W(p)).
    composite = sitk.CompositeTransform(transforms[::-1])
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


# ---------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``itk-odereg`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: command line arguments without the program name.

    Returns:
        0 on success, 1 for bad inputs / I/O errors, 2 for usage errors, 130 if interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - one line for users, traceback with --debug
        if getattr(args, "debug", False):
            raise
        sys.stderr.write(f"{PROG}: error: {_one_line(err)}\n")
        return 1


def _one_line(err: BaseException) -> str:
    if isinstance(err, CLIError):
        return str(err)
    text = str(err).strip()
    if "sitk::ERROR:" in text or "itk::ERROR" in text or "ITK ERROR" in text:
        text = _sitk_message(err)
    first = text.splitlines()[0] if text else ""
    if isinstance(err, (ValueError, TypeError, OSError)):
        return first or type(err).__name__
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
