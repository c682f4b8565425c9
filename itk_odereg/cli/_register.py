"""``itk-odereg register``: read both images once, run the engine, write the ANTs-named outputs."""
from __future__ import annotations

import argparse
import sys
import time

from ._common import CLIError, PROG, _check_input_file, _check_prefix, _error_text, _read_input, _with_flags


def register_outputs(prefix: str, qc: bool = False) -> dict[str, str]:
    """The files ``itk-odereg register -o PREFIX`` writes, by role (:data:`itk_odereg.adapters.ants.ANTS_FILE_NAMES`).

    Args:
        prefix: output prefix (concatenated, as ANTs does).
        qc: include the QC figure.

    Returns:
        dict role -> path: ``warped``, ``inverse_warped``, ``affine``, ``warp``,
        ``inverse_warp``, ``composite``, ``inverse_composite``, ``jacobian`` [, ``qc``].
    """
    from ..adapters.ants import ANTS_FILE_NAMES, ants_output_paths

    return ants_output_paths(prefix, [role for role in ANTS_FILE_NAMES if qc or role != "qc"])


#: option keyword -> the command line flag that sets it, for error messages.
_FLAGS = {"method": "--method", "model": "--model", "metric": "--metric", "affine": "--affine", "device": "--device",
          "iterations": "--iterations", "steps": "--steps", "seed": "--seed", "resolution_mm": "--resolution"}


def _cli_message(err: BaseException) -> str:
    """An engine or options error in the command line's terms: flags and -f/-m instead of Python names."""
    text = _error_text(err).replace("register(): 'fixed'", "fixed image (-f)").replace("register(): 'moving'", "moving image (-m)")
    text = _with_flags(text, "register():", _FLAGS).replace("register(): ", "")
    return text.splitlines()[0] if text else type(err).__name__


def _cmd_register(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..adapters.ants import write_registration
    from ..core.image import load_image
    from ..io_utils import check_free_space, check_not_inputs, check_writable
    from ..registration.engine import register_images
    from ..registration.options import RegistrationOptions

    _check_input_file(args.fixed, "fixed image (-f)")
    _check_input_file(args.moving, "moving image (-m)")
    _check_prefix(args.output)
    if args.resolution != "auto" and args.resolution < 0:
        raise CLIError(f"--resolution must be positive (mm), 0 for the fixed grid or auto, got {args.resolution}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    if args.model is not None and not args.method.startswith("msodenet"):
        raise CLIError(f"--model selects the MS-ODENet model of --method msodenet or msodenet+nodeo; "
                       f"--method {args.method} does not use one (drop --model, or choose an msodenet method)")
    try:
        options = RegistrationOptions.create(
            "register()", method=args.method, model=args.model or "bspline", metric=args.metric,
            affine=None if args.affine == "none" else args.affine, device=args.device,
            iterations=tuple(args.iterations) if args.iterations else None, steps=args.steps, seed=args.seed,
            reproducible=args.reproducible,
            resolution_mm=args.resolution if args.resolution == "auto" else (args.resolution or None))
    except (ValueError, TypeError) as err:
        raise CLIError(_cli_message(err)) from None
    outputs = register_outputs(args.output, args.qc)
    inputs = [args.fixed, args.moving]
    try:
        check_not_inputs(outputs.values(), inputs, PROG)
    except ValueError as err:
        raise CLIError(str(err).split(": ", 1)[-1] + " (choose another -o prefix)") from None
    try:
        check_writable(outputs.values(), PROG)
    except OSError as err:
        raise CLIError(str(err).split(": ", 1)[-1]) from None

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
        # The largest file staged uncompressed, the displacement field (float32, one component per axis).
        check_free_space(args.output + "x", fixed.grid.numel * fixed.grid.ndim * 4 + 348, PROG)
        registration = register_images(fixed, moving, options, progress=not args.quiet)
    except (ValueError, TypeError, OSError) as err:
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
