"""Safe file output: atomic writes that never clobber the caller's inputs.

Every writer in itk-odereg goes through :func:`atomic_write`: the file is
written under a temporary name in the destination directory, with the same
extension (SimpleITK and ITK choose the file format from the extension), and
then moved into place with ``os.replace``, which is atomic on POSIX and Windows
within one file system. A reader therefore sees either the old file or the
complete new one, never a partial file; on failure the temporary file is removed
and the destination is untouched.

:func:`write_image` writes an image through :func:`atomic_write`; for
``.nii.gz`` it writes the uncompressed NIfTI and gzips it with a fast zlib
level (ITK's NIfTI writer ignores SimpleITK's ``compressionLevel``), which
gives the same NIfTI bytes inside the same gzip format, about twice as fast.
"""
from __future__ import annotations

import os
import uuid
import zlib
from typing import Any, Callable, Iterable

from .core.typing import PathLike

__all__ = ["split_extension", "check_not_inputs", "atomic_write", "write_image", "stage_image", "StagedImage",
           "FAST_COMPRESSION_LEVEL"]

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")

#: zlib level of the files itk-odereg writes: 1, the fastest (a smooth float64
#: displacement field compresses to about 1.07x the size at ITK's default level).
FAST_COMPRESSION_LEVEL = 1


def split_extension(path: PathLike) -> tuple[str, str]:
    """Split a file name into (stem, extension), keeping compound extensions whole.

    ``"a/sub.01_1Warp.nii.gz"`` gives ``("sub.01_1Warp", ".nii.gz")``;
    ``"x.mat"`` gives ``("x", ".mat")``; a name without a dot gives ``(name, "")``.

    Args:
        path: a file path (only its last component is used).

    Returns:
        (stem, extension), the extension with its leading dot.
    """
    name = os.path.basename(os.fspath(path))
    stem, ext = os.path.splitext(name)
    if ext.lower() in _COMPRESSION_SUFFIXES:
        stem2, ext2 = os.path.splitext(stem)
        if ext2:
            return stem2, ext2 + ext
    return stem, ext


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_inputs(outputs: Iterable[PathLike], inputs: Iterable[Any], caller: str = "check_not_inputs()") -> None:
    """Refuse to write any output that is one of the inputs.

    Paths are compared after resolving symbolic links (``os.path.realpath``)
    and, when both exist, with ``os.path.samefile`` (hard links).

    Args:
        outputs: the paths about to be written.
        inputs: the caller's inputs; entries that are not paths (images,
            None, ...) are ignored, so a caller can pass its raw arguments.
        caller: call site for the error message.

    Raises:
        ValueError: naming the first output that would overwrite an input.
    """
    in_paths = [os.fspath(p) for p in inputs if isinstance(p, (str, os.PathLike))]
    for out in outputs:
        out_s = os.fspath(out)
        for inp in in_paths:
            if _same_file(out_s, inp):
                raise ValueError(f"{caller}: refusing to overwrite input file '{inp}' (output '{out_s}')")


def _check_destination(path: PathLike, inputs: Iterable[Any], caller: str) -> tuple[str, str]:
    """(destination, its directory) after the checks every writer makes before writing anything."""
    dest = os.fspath(path)
    if not isinstance(dest, str) or dest == "":
        raise ValueError(f"{caller}: output path must be a non-empty str or os.PathLike, got {path!r}")
    check_not_inputs([dest], inputs, caller)
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise ValueError(f"{caller}: output directory does not exist: '{directory}' (for '{dest}')")
    if os.path.isdir(dest):
        raise ValueError(f"{caller}: output path is a directory: '{dest}'")
    return dest, directory


def atomic_write(
    path: PathLike,
    writer: Callable[[str], Any],
    *,
    inputs: Iterable[Any] = (),
    caller: str = "atomic_write()",
) -> str:
    """Write a file atomically: ``writer(tmp)`` then ``os.replace(tmp, path)``.

    The temporary file lives in the directory of ``path`` (so the final rename
    stays on one file system) and is named ``.<stem>.tmp-<random><ext>`` with
    the extension of ``path`` (compound ones like ``.nii.gz`` kept), so
    extension-driven writers such as ``sitk.WriteImage`` pick the right format.
    It is removed if ``writer`` raises or does not create it.

    Args:
        path: destination file. Its directory must exist. An existing file there
            is replaced, unless it is one of ``inputs``.
        writer: callable taking the temporary path (a str) and writing the file.
        inputs: paths that must not be overwritten (non-path entries ignored).
        caller: call site for error messages.

    Returns:
        ``path`` as a str.

    Raises:
        ValueError: if ``path`` is one of ``inputs``, is a directory, or its
            directory does not exist.
        Exception: whatever ``writer`` raises (after cleanup).
    """
    dest, directory = _check_destination(path, inputs, caller)
    stem, ext = split_extension(dest)
    tmp = os.path.join(directory, f".{stem}.tmp-{uuid.uuid4().hex[:12]}{ext}")
    try:
        writer(tmp)
        if not os.path.isfile(tmp):
            raise RuntimeError(f"{caller}: the writer did not create the file '{tmp}' (for '{dest}')")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return dest


def _gzip_file(src: str, dest: str, level: int) -> None:
    """gzip ``src`` into ``dest`` (RFC 1952, no file name, mtime 0: the bytes depend on the data only)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)   # 16+: gzip header and trailer
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while True:
            chunk = fin.read(1 << 22)
            if not chunk:
                break
            fout.write(compressor.compress(chunk))
        fout.write(compressor.flush())


def write_image(
    image: Any,
    path: PathLike,
    *,
    compression_level: int = FAST_COMPRESSION_LEVEL,
    inputs: Iterable[Any] = (),
    caller: str = "write_image()",
) -> str:
    """Write a SimpleITK image atomically (:func:`atomic_write`), compressed where the format allows.

    ``.nii.gz``: ITK's NIfTI writer ignores SimpleITK's ``compressionLevel`` and
    always uses zlib's default level, so the image is written as an uncompressed
    ``.nii`` next to the destination (a hidden temporary file, always removed) and
    gzipped here at ``compression_level``. The decompressed bytes are exactly the
    ``.nii`` ITK writes; any gzip reader (ITK, SimpleITK, ANTs, nibabel, FSL) reads it.
    Other formats: ``sitk.WriteImage(image, tmp, useCompression=True, compressionLevel=...)``.

    Args:
        image: a SimpleITK image.
        path: destination; its extension chooses the format.
        compression_level: zlib level 0..9 (default 1, the fastest; -1: the writer's default).
        inputs: paths that must not be overwritten (non-path entries ignored).
        caller: call site for error messages.

    Returns:
        ``path`` as a str.
    """
    import SimpleITK as sitk

    dest = os.fspath(path)
    level = int(compression_level)
    if not -1 <= level <= 9:
        raise ValueError(f"{caller}: 'compression_level' must be -1 or 0..9, got {compression_level!r}")
    if not dest.lower().endswith(".nii.gz") or level == -1:
        return atomic_write(dest, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True, compressionLevel=level),
                            inputs=inputs, caller=caller)

    return stage_image(image, dest, compression_level=level, inputs=inputs, caller=caller).finish()


class StagedImage:
    """An image written in two steps: :func:`stage_image` writes it uncompressed under a hidden
    temporary name now; :meth:`finish` compresses it and moves it into place, :meth:`abort`
    removes what was written.

    The split lets a writer of many files build and write each image one at a time (the
    image objects, the largest temporaries, never coexist) and then run the compressions,
    which hold little memory and release the GIL, in parallel.
    """

    def __init__(self, dest: str, raw: str, level: int, inputs: Iterable[Any], caller: str) -> None:
        self.dest, self.raw, self.level, self.caller = dest, raw, level, caller
        self.inputs = list(inputs)

    def finish(self) -> str:
        """gzip the staged file into place (atomic); returns the destination."""
        try:
            return atomic_write(self.dest, lambda tmp: _gzip_file(self.raw, tmp, self.level), inputs=self.inputs,
                                caller=self.caller)
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove the staged temporary file (nothing under the final name is touched)."""
        try:
            os.remove(self.raw)
        except OSError:
            pass


def stage_image(
    image: Any,
    path: PathLike,
    *,
    compression_level: int = FAST_COMPRESSION_LEVEL,
    inputs: Iterable[Any] = (),
    caller: str = "stage_image()",
) -> StagedImage:
    """Write a SimpleITK image destined for ``path`` (``.nii.gz``) uncompressed, next to it, under a hidden name.

    Returns a :class:`StagedImage`; its :meth:`~StagedImage.finish` gives the same file as
    :func:`write_image`. The checks of :func:`atomic_write` (inputs, directory) run first.

    Raises:
        ValueError: ``path`` does not end in ``.nii.gz``, is an input, or its directory is missing.
    """
    import SimpleITK as sitk

    dest = os.fspath(path)
    if not dest.lower().endswith(".nii.gz"):
        raise ValueError(f"{caller}: stage_image() writes .nii.gz files, got '{dest}'")
    level = int(compression_level)
    if not 0 <= level <= 9:
        raise ValueError(f"{caller}: 'compression_level' must be 0..9, got {compression_level!r}")
    inputs = list(inputs)
    dest, directory = _check_destination(dest, inputs, caller)
    stem, _ = split_extension(dest)
    raw = os.path.join(directory, f".{stem}.tmp-{uuid.uuid4().hex[:12]}.nii")
    try:
        sitk.WriteImage(image, raw, useCompression=False)
    except BaseException:
        try:
            os.remove(raw)
        except OSError:
            pass
        raise
    return StagedImage(dest, raw, level, inputs, caller)
