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
import signal
import sys
import warnings
from typing import Any, Optional, Sequence

from ._common import CLIError, PROG, _error_text, _resolution, _sitk_message
from ._train_export import _cmd_export, _cmd_train
from ._register import _cmd_register, register_outputs
from ._apply import _cmd_apply

__all__ = ["main", "build_parser", "register_outputs"]

# The registries' names (registration.stages.STAGES, losses.METRICS), spelled out here so that
# building the parser and --help need no torch; tests/test_cli.py keeps them equal to the registries.
METHOD_CHOICES = ("nodeo", "msodenet", "msodenet+nodeo", "none")
METRIC_CHOICES = ("lncc", "mse", "mi", "ngf")
AFFINE_CHOICES = ("affine", "rigid", "none")

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


def build_parser() -> argparse.ArgumentParser:
    """The ``itk-odereg`` argument parser (subcommands ``register`` and ``apply``)."""
    from .._version import __version__

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
    _add_register_command(sub, common)
    _add_apply_command(sub, common)
    _add_train_command(sub, common)
    _add_export_command(sub, common)
    return parser


def _add_register_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``register`` command's options."""
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
    reg.add_argument("--method", choices=METHOD_CHOICES, default="nodeo",
                     help="deformable stage: nodeo (per-pair neural-ODE optimization; default), msodenet (a "
                          "trained MS-ODENet model, see --model; a few solver steps, 3D only), msodenet+nodeo "
                          "(MS-ODENet first, then NODEO refines), none (the affine alone: only the .mat is meaningful, "
                          "the warps are zero)")
    reg.add_argument("--model", default=None, metavar="NAME|FILE",
                     help="MS-ODENet model for the msodenet methods (refused with the others): a .pt file written by `itk-odereg train`, "
                          "or a shipped name bspline (default; after the affine stage), rigid+bspline (for "
                          "unaligned inputs in any orientation, with --affine none), rigid")
    reg.add_argument("--metric", choices=METRIC_CHOICES, default="lncc",
                     help="similarity: lncc (local NCC, same contrast; default), mse, "
                          "ngf (normalized gradient fields: different contrasts such as T1 to T2, recommended; "
                          "the affine stage then uses mi), mi (Mattes mutual information, both stages)")
    reg.add_argument("--affine", choices=AFFINE_CHOICES, default="affine",
                     help="pre-alignment (default affine: centres of mass, rigid, affine)")
    reg.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="torch device (default cpu)")
    reg.add_argument("--iterations", type=int, nargs="+", metavar="N",
                     help="NODEO iterations per pyramid level, coarse to fine, 1 to 3 values (default 120 60 50)")
    reg.add_argument("--steps", type=int, default=4,
                     help="Euler steps on t in [0, 1] while NODEO optimizes its finest level (default 4; "
                          "the coarser levels take min(3, N); the written map integrates the optimized flow "
                          "with at least 4)")
    reg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    reg.add_argument("--reproducible", action="store_true",
                     help="bit-identical outputs for a seed at any --threads: the stages run on one thread "
                          "(slower). Without it, the same seed and thread count repeat exactly")
    reg.add_argument("--resolution", type=_resolution, default="auto", metavar="MM",
                     help="NODEO working grid spacing in mm (default auto: the fixed image's own grid, "
                          "or 1 mm for images finer than 1 mm; 0: always the fixed grid)")
    reg.add_argument("--threads", type=int, default=None, metavar="N",
                     help="CPU threads of torch and ITK (default: torch's and ITK's defaults)")
    reg.add_argument("--qc", action="store_true", help="also write PREFIXQC.png")
    reg.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    reg.set_defaults(func=_cmd_register)


def _add_apply_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``apply`` command's options."""
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


def _add_train_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``train`` command's options."""
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


def _add_export_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``export`` command's options."""
    exp = sub.add_parser(
        "export", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="export an MS-ODENet model to TorchScript or torch.export",
        description="Write a trained model as a TorchScript module (.pt) or a torch.export program (.pt2).\n"
        "forward(fixed, moving) takes float tensors [1,1,D,H,W] on one grid (any intensities: the .pt\n"
        "module maps each image's 1st..99th percentile to [0, 1] and refuses bad shapes, dtypes, NaN) and\n"
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``itk-odereg`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: command line arguments without the program name.

    Returns:
        0 on success, 1 for bad inputs / I/O errors, 2 for usage errors, 130 if interrupted
        (Ctrl-C), 143 if terminated (SIGTERM). Either way the hidden temporary files of the
        outputs being written are removed and the files under the final names are left as
        they were (:class:`itk_odereg.io_utils.OutputSet`).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    previous = _terminate_as_exception()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: interrupted\n")
        return 130
    except _Terminated:
        sys.stderr.write(f"\n{PROG}: terminated\n")
        return 143
    except Exception as err:  # noqa: BLE001 - one line for users, traceback with --debug
        if getattr(args, "debug", False):
            raise
        sys.stderr.write(f"{PROG}: error: {_one_line(err)}\n")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line on stderr, as the errors are."""
    sys.stderr.write(f"{PROG}: warning: {message}\n")


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` and clean-up runs (as for Ctrl-C)."""


def _terminate_as_exception():
    """Turn SIGTERM into :class:`_Terminated` (main thread only); returns the previous handler, or None."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _one_line(err: BaseException) -> str:
    if isinstance(err, CLIError):
        return str(err)
    text = _error_text(err).strip()
    if "sitk::ERROR:" in text or "itk::ERROR" in text or "ITK ERROR" in text:
        text = _sitk_message(err)
    first = text.splitlines()[0] if text else ""
    if isinstance(err, (ValueError, TypeError, OSError)):
        return first or type(err).__name__
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
