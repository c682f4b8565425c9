"""Safe file output: atomic writes that never clobber the caller's inputs.

Every writer in itk-odereg goes through :func:`atomic_write`: the file is
written under a temporary name in the destination directory, with the same
extension (SimpleITK and ITK choose the file format from the extension), and
then moved into place with ``os.replace``, which is atomic on POSIX and Windows
within one file system. A reader therefore sees either the old file or the
complete new one, never a partial file; on failure the temporary file is removed
and the destination is untouched.

Every write is checked before it is moved into place: the file must exist and hold at
least the bytes the data needs (ITK's NIfTI and MATLAB transform writers report a full
disk on stderr without failing), and where reading it back is cheap it is read back. A
failure on a full disk is reported as "no space left on device" with the user's path,
never the temporary one.

:class:`OutputSet` makes a *set* of files one unit (the ANTs outputs of one registration):
every member is written under a temporary name first, and only when all are complete are
they moved into place together, with SIGINT and SIGTERM held off for those few renames.
:func:`check_writable` finds an unwritable output place before any work is done.

:func:`write_image` writes an image through :func:`atomic_write`; for
``.nii.gz`` it writes the uncompressed NIfTI and gzips it with a fast zlib
level (ITK's NIfTI writer ignores SimpleITK's ``compressionLevel``), which
gives the same NIfTI bytes inside the same gzip format, about twice as fast.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
import uuid
import zlib
from typing import Any, Callable, Iterable, Optional

from .core.typing import PathLike

__all__ = ["split_extension", "check_not_inputs", "check_writable", "check_free_space", "atomic_write", "write_image", "stage_image",
           "StagedImage", "OutputSet", "FAST_COMPRESSION_LEVEL"]

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


def _temp_path(dest: str, directory: str, tag: str = "tmp") -> str:
    stem, ext = split_extension(dest)
    return os.path.join(directory, f".{stem}.{tag}-{uuid.uuid4().hex[:12]}{ext}")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


#: below this many free bytes a failed write is reported as a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def _free_bytes(directory: str) -> Optional[int]:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _write_failure(err: BaseException, tmp: str, dest: str, directory: str, caller: str) -> BaseException:
    """The error to raise for a failed write: a full disk said plainly, the user's path instead of the temporary one."""
    text = str(err)
    free = _free_bytes(directory)
    full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left" in text or (
        free is not None and free < _NEARLY_FULL_BYTES)
    if full:
        return OSError(errno.ENOSPC, f"{caller}: no space left on device while writing '{dest}' "
                                     f"({free if free is not None else 'unknown'} bytes free in '{directory}'); "
                                     "nothing was written under that name")
    if tmp in text:
        lines = [line for line in text.replace(tmp, dest).splitlines() if line.strip()]
        detail = next((line.split("sitk::ERROR:", 1)[-1].strip() for line in lines if "ERROR" in line), lines[-1])
        return type(err)(f"{caller}: could not write '{dest}': {detail}") if isinstance(
            err, (ValueError, RuntimeError, OSError)) else err
    return err


def _verify_written(tmp: str, dest: str, directory: str, caller: str, min_bytes: int,
                    read_back: Optional[Callable[[str], Any]]) -> None:
    """Refuse a write that left no file, fewer bytes than its data needs, or a file that does not read back."""
    size = os.path.getsize(tmp) if os.path.isfile(tmp) else None
    if size is None:
        raise RuntimeError(f"{caller}: the writer did not create the file for '{dest}'")
    if size < max(1, min_bytes):
        free = _free_bytes(directory)
        if free is not None and free < max(_NEARLY_FULL_BYTES, min_bytes):
            raise OSError(errno.ENOSPC, f"{caller}: no space left on device while writing '{dest}' "
                                        f"(wrote {size} of {min_bytes} bytes; {free} bytes free in '{directory}'); "
                                        "nothing was written under that name")
        raise OSError(errno.EIO, f"{caller}: incomplete write of '{dest}' ({size} of at least {min_bytes} bytes); "
                                 "nothing was written under that name")
    if read_back is not None:
        try:
            read_back(tmp)
        except Exception as err:  # noqa: BLE001 - any failure to read back means the file is not usable
            raise OSError(errno.EIO, f"{caller}: '{dest}' did not read back after writing "
                                     f"({str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}); "
                                     "nothing was written under that name") from None


def _write_checked(tmp: str, dest: str, directory: str, writer: Callable[[str], Any], caller: str, min_bytes: int,
                   read_back: Optional[Callable[[str], Any]]) -> None:
    """``writer(tmp)`` then :func:`_verify_written`; the temporary file is removed on any failure."""
    try:
        writer(tmp)
        _verify_written(tmp, dest, directory, caller, min_bytes, read_back)
    except BaseException as err:
        failure = _write_failure(err, tmp, dest, directory, caller) if isinstance(err, Exception) else err
        _remove_quietly(tmp)
        if failure is err:
            raise
        raise failure from None


def check_writable(destinations: Iterable[PathLike], caller: str, *, image_format: bool = False) -> None:
    """Find an output place that cannot be written before any work is done.

    For each distinct directory of ``destinations``, a hidden file is created there and removed
    again: a read-only file system, missing permissions or a missing directory fail here, with
    the user's path, instead of after a registration. With ``image_format``, a one-voxel image
    is also written with each destination's extension, so that an extension no ITK image
    writer knows (``out.foo``) is refused up front, naming the user's path.

    Raises:
        ValueError: a destination's directory does not exist.
        PermissionError / OSError: it cannot be written (the message names the directory).
    """
    seen = set()
    for dest in destinations:
        directory = os.path.dirname(os.path.abspath(os.fspath(dest)))
        if directory in seen:
            continue
        seen.add(directory)
        if not os.path.isdir(directory):
            raise ValueError(f"{caller}: output directory does not exist: '{directory}' (for '{os.fspath(dest)}')")
        probe = _temp_path(os.fspath(dest), directory, "probe")
        try:
            with open(probe, "wb") as f:
                f.write(b"itk-odereg")
        except OSError as err:
            _remove_quietly(probe)
            reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            raise type(err)(err.errno, f"{caller}: cannot write into the output directory '{directory}' "
                                       f"(for '{os.fspath(dest)}'): {reason}") from None
        _remove_quietly(probe)
    if image_format:
        import SimpleITK as sitk

        for dest in destinations:
            dest = os.fspath(dest)
            probe = _temp_path(dest, os.path.dirname(os.path.abspath(dest)), "probe")
            try:
                sitk.WriteImage(sitk.Image([1, 1, 1], sitk.sitkFloat32), probe)
            except RuntimeError:
                raise ValueError(f"{caller}: no image writer for the extension of '{dest}' "
                                 f"('{split_extension(dest)[1] or '(none)'}'): use .nii.gz, .nii, .nrrd or .mha, "
                                 "for example") from None
            finally:
                _remove_quietly(probe)


def check_free_space(destination: PathLike, needed_bytes: int, caller: str) -> None:
    """Refuse up front when the destination's file system has fewer than ``needed_bytes`` free.

    Raises:
        OSError: ``errno.ENOSPC``, naming the directory, the bytes needed and the bytes free.
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(destination)))
    free = _free_bytes(directory)
    if free is not None and free < needed_bytes:
        raise OSError(errno.ENOSPC, f"{caller}: no space left on device for the outputs in '{directory}': "
                                    f"they need at least {needed_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free")


def atomic_write(
    path: PathLike,
    writer: Callable[[str], Any],
    *,
    inputs: Iterable[Any] = (),
    caller: str = "atomic_write()",
    min_bytes: int = 1,
    read_back: Optional[Callable[[str], Any]] = None,
) -> str:
    """Write a file atomically: ``writer(tmp)``, check it, then ``os.replace(tmp, path)``.

    The temporary file lives in the directory of ``path`` (so the final rename
    stays on one file system) and is named ``.<stem>.tmp-<random><ext>`` with
    the extension of ``path`` (compound ones like ``.nii.gz`` kept), so
    extension-driven writers such as ``sitk.WriteImage`` pick the right format.
    It is removed if ``writer`` raises, does not create it, or the check fails.

    Args:
        path: destination file. Its directory must exist. An existing file there
            is replaced, unless it is one of ``inputs``.
        writer: callable taking the temporary path (a str) and writing the file.
        inputs: paths that must not be overwritten (non-path entries ignored).
        caller: call site for error messages.
        min_bytes: the fewest bytes a complete file has (a shorter one is a failed write).
        read_back: optional callable that reads the temporary file and raises if it is unusable.

    Returns:
        ``path`` as a str.

    Raises:
        ValueError: if ``path`` is one of ``inputs``, is a directory, or its
            directory does not exist.
        OSError: ``errno.ENOSPC`` ("no space left on device", naming ``path``) on a full disk;
            ``errno.EIO`` for a short file or one that does not read back.
        Exception: whatever else ``writer`` raises (after cleanup), naming ``path``, not the temporary file.
    """
    dest, directory = _check_destination(path, inputs, caller)
    tmp = _temp_path(dest, directory)
    _write_checked(tmp, dest, directory, writer, caller, min_bytes, read_back)
    try:
        os.replace(tmp, dest)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return dest


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM off (in the main thread) while a few renames finish."""
    held = (threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask"))
    if held:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class OutputSet:
    """Files that belong together (one registration's outputs): all are replaced, or none is.

    Each member is written with :meth:`write` under a hidden temporary name in its destination
    directory and checked as :func:`atomic_write` checks; :meth:`commit` then moves all of them
    into place (after removing ``stale`` files of an earlier set), with SIGINT and SIGTERM held
    off for those renames. Used as a context manager, an exception (an error, Ctrl-C, SIGTERM
    turned into an exception by the CLI) before the commit removes every temporary file and
    leaves the destinations as they were.
    """

    def __init__(self, caller: str, inputs: Iterable[Any] = ()) -> None:
        self.caller = caller
        self.inputs = list(inputs)
        self._members: list[tuple[str, str]] = []   # (temporary, destination)
        self._lock = threading.Lock()
        self.committed = False

    def write(self, path: PathLike, writer: Callable[[str], Any], *, min_bytes: int = 1,
              read_back: Optional[Callable[[str], Any]] = None) -> str:
        """Write one member to its temporary name (thread-safe); returns its destination."""
        dest, directory = _check_destination(path, self.inputs, self.caller)
        tmp = _temp_path(dest, directory)
        with self._lock:
            self._members.append((tmp, dest))
        _write_checked(tmp, dest, directory, writer, self.caller, min_bytes, read_back)
        return dest

    def commit(self, stale: Iterable[PathLike] = ()) -> list[str]:
        """Remove ``stale`` files that exist, then move every member into place; returns the stale files removed."""
        removed = []
        with _signals_held():
            for path in stale:
                path = os.fspath(path)
                if os.path.lexists(path) and path not in {dest for _, dest in self._members}:
                    os.remove(path)
                    removed.append(path)
            for tmp, dest in self._members:
                os.replace(tmp, dest)
            self.committed = True
        return removed

    def abort(self) -> None:
        """Remove every temporary file written so far (the destinations are untouched)."""
        if not self.committed:
            for tmp, _ in self._members:
                _remove_quietly(tmp)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


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
        size, components = image.GetSize(), image.GetNumberOfComponentsPerPixel()

        def read_back(tmp: str) -> None:
            back = sitk.ReadImage(tmp)
            if back.GetSize() != size or back.GetNumberOfComponentsPerPixel() != components:
                raise RuntimeError(f"read back as size {back.GetSize()}, {back.GetNumberOfComponentsPerPixel()} "
                                   f"component(s); wrote {size}, {components}")

        uncompressed_nifti = dest.lower().endswith(".nii")
        return atomic_write(dest, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True, compressionLevel=level),
                            inputs=inputs, caller=caller,
                            min_bytes=_raw_nifti_bytes(image) if uncompressed_nifti else 1,
                            read_back=None if uncompressed_nifti else read_back)

    return stage_image(image, dest, compression_level=level, inputs=inputs, caller=caller).finish()


def _raw_nifti_bytes(image: Any) -> int:
    """The fewest bytes of ``image`` as an uncompressed single-file NIfTI (348-byte header, then the voxels)."""
    import SimpleITK as sitk

    return 348 + int(sitk.GetArrayViewFromImage(image).nbytes)


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

    def finish(self, into: Optional[OutputSet] = None) -> str:
        """gzip the staged file into place (atomic), or into a member of ``into``; returns the destination."""
        def compress(tmp: str) -> None:
            _gzip_file(self.raw, tmp, self.level)

        try:
            if into is not None:
                return into.write(self.dest, compress)
            return atomic_write(self.dest, compress, inputs=self.inputs, caller=self.caller)
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove the staged temporary file (nothing under the final name is touched)."""
        _remove_quietly(self.raw)


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
    raw = _temp_path(dest, directory)[: -len(".gz")]   # ".<stem>.tmp-<random>.nii": hidden, unique
    _write_checked(raw, dest, directory, lambda tmp: sitk.WriteImage(image, tmp, useCompression=False), caller,
                   _raw_nifti_bytes(image), None)
    return StagedImage(dest, raw, level, inputs, caller)
