"""Shared pieces of the command line: its error type and input, output and message helpers."""
from __future__ import annotations

import argparse
import os
from typing import Any, Sequence


PROG = "itk-odereg"


class CLIError(Exception):
    """A user error reported as one line and exit status 1."""


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
    from ..io_utils import write_image

    # Atomic; .nii.gz gzipped at zlib level 1 (io_utils.write_image).
    write_image(image, path, inputs=inputs, caller=PROG)


def _read_input(path: str, option: str) -> Any:
    """Read an input image once; the engine and the outputs (inverse warp, QC) reuse it."""
    import SimpleITK as sitk

    _check_file_integrity(path, option)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as err:
        raise CLIError(f"{option} could not be read as an image from '{path}': {_sitk_message(err)}") from None


def _check_file_integrity(path: str, option: str) -> None:
    """Refuse a truncated .gz or NIfTI file, or NIfTI NaN/Inf voxels, which ITK would read as zeros."""
    from ..core.file_integrity import check_image_file

    try:
        check_image_file(path, option)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _error_text(err: BaseException) -> str:
    """An error's message without the errno prefix of an OSError or a leading program name."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return text[len(PROG) + 2:] if text.startswith(f"{PROG}: ") else text


def _with_flags(text: str, caller: str, flags: dict) -> str:
    """An API error's ``caller 'keyword'`` (and ``caller invalid keyword``) in the command line's terms, its flags."""
    for key, flag in flags.items():
        text = text.replace(f"{caller} '{key}'", flag).replace(f"{caller} invalid {key}", f"invalid {flag}")
    return text


def _sitk_message(err: BaseException) -> str:
    msg = str(err)
    if "sitk::ERROR:" in msg:
        return msg.split("sitk::ERROR:", 1)[-1].strip().splitlines()[0]
    lines = [line for line in msg.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _read_image(path: str, option: str) -> Any:
    import SimpleITK as sitk

    _check_input_file(path, option)
    _check_file_integrity(path, option)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as err:
        raise CLIError(f"{option} could not be read as an image: '{path}': {_sitk_message(err)}") from None
    if image.GetDimension() not in (2, 3):
        raise CLIError(f"{option} '{path}' is a {image.GetDimension()}D image; only 2D and 3D images are supported")
    return image
