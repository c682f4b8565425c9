"""ANTs adapter: the files ANTs writes, by exactly one writer.

:func:`write_ants_files` is the only function that knows ANTs' file names
(:data:`ANTS_FILE_NAMES`) and writes them. :func:`write_registration` feeds it a
:class:`~itk_odereg.registration.result.Registration` (the CLI, ``ants_registration``
and the examples use it); :func:`write_ants_transforms` feeds it field images a caller
made itself.

File conventions (``docs/methods.md`` section 3):

* ``0GenericAffine.mat``: ``sitk.WriteTransform`` of a ``sitk.AffineTransform`` (ITK's
  MATLAB format, which ANTs reads), fixed-after-warp points to moving points.
* ``1Warp.nii.gz``: the deformable part as a vector image, which ``sitk.WriteImage``
  writes as ANTs does: a 5D NIfTI (X, Y, Z, 1, 3), intent 1007 (vector), components in ITK
  LPS mm although the NIfTI header is RAS.
* ``1InverseWarp.nii.gz``: its inverse, also on the *fixed* grid (ANTs' convention).
* ANTs lists: ``fwdtransforms = [warp, affine]`` (``p -> A(W(p))``; the first listed acts
  first on reference points), ``invtransforms = [affine, inverse warp]`` with
  ``whichtoinvert = [True, False]``.

Every file is written atomically (:func:`itk_odereg.io_utils.atomic_write`); the
``.nii.gz`` ones at zlib level 1 (:func:`itk_odereg.io_utils.write_image`). All outputs
are checked against the inputs before anything is written.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import torch

from ..core.image import LoadedImage
from ..core.memory import release_freed_memory
from ..core.typing import PathLike
from ..io_utils import OutputSet, check_not_inputs, check_writable, stage_image, write_image
from ..registration.result import Registration

__all__ = [
    "ANTS_FILE_NAMES",
    "ANTS_INVERSE_WHICHTOINVERT",
    "AntsTransformFiles",
    "ants_output_paths",
    "check_output_prefix",
    "write_ants_files",
    "write_ants_transforms",
    "write_registration",
]

#: role -> file name after the prefix, in the order ``itk-odereg register`` lists them.
ANTS_FILE_NAMES: dict[str, str] = {
    "warped": "Warped.nii.gz",
    "inverse_warped": "InverseWarped.nii.gz",
    "affine": "0GenericAffine.mat",
    "warp": "1Warp.nii.gz",
    "inverse_warp": "1InverseWarp.nii.gz",
    "composite": "Composite.h5",
    "inverse_composite": "InverseComposite.h5",
    "jacobian": "JacobianDeterminant.nii.gz",
    "qc": "QC.png",
}
_TRANSFORM_ROLES = ("affine", "composite", "inverse_composite")
_DEFAULT_ROLES = tuple(role for role in ANTS_FILE_NAMES if role != "qc")

#: ``whichtoinvert`` to pass to ``ants.apply_transforms`` with ``invtransforms``
#: (``[affine, inverse warp]``): the affine ``.mat`` is inverted on the fly, the inverse warp is used as is.
ANTS_INVERSE_WHICHTOINVERT = (True, False)


def ants_output_paths(prefix: str, roles: Iterable[str] = _DEFAULT_ROLES) -> dict[str, str]:
    """``{role: prefix + ANTS_FILE_NAMES[role]}``; the prefix is concatenated, as ANTs does."""
    unknown = [role for role in roles if role not in ANTS_FILE_NAMES]
    if unknown:
        raise ValueError(f"ants_output_paths(): unknown output role(s) {unknown}. Must be among {list(ANTS_FILE_NAMES)}")
    return {role: os.fspath(prefix) + ANTS_FILE_NAMES[role] for role in roles}


def check_output_prefix(prefix: PathLike, roles: Iterable[str], inputs: Sequence[Any], caller: str,
                        directory_label: str = "the output directory") -> dict[str, str]:
    """The paths of ``roles`` under ``prefix``, after the checks made before anything is written.

    Raises:
        ValueError: an output that is one of ``inputs`` (symbolic and hard links resolved), or
            the prefix's directory (named ``directory_label`` in the message) does not exist.
        OSError: the directory cannot be written (read-only, no permission, full).
    """
    paths = ants_output_paths(os.fspath(prefix), roles)
    check_not_inputs(paths.values(), inputs, caller)
    directory = os.path.dirname(os.path.abspath(os.fspath(prefix) + "x"))
    if not os.path.isdir(directory):
        raise ValueError(f"{caller}: {directory_label} does not exist: '{directory}'")
    check_writable(list(paths.values())[:1], caller)
    return paths


def run_jobs(jobs: Sequence[Callable[[], Any]], threads: Optional[int]) -> None:
    """Run ``jobs`` on up to ``threads`` (default: the CPU count, at most 4) threads; re-raise the first error.

    Every job still runs when another fails (each writes one complete file or none).
    """
    workers = max(1, min(4, threads or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="itk-odereg-write") as pool:
        futures = [pool.submit(job) for job in jobs]
    for future in futures:
        future.result()


def _write_members(out: OutputSet, paths: Mapping[str, str], items: Mapping[str, Any], image: Callable[[str], Any],
                   transforms_job: Callable[[], None], inputs: Sequence[Any], threads: Optional[int],
                   caller: str) -> None:
    """Every image and transform member of :func:`write_ants_files` to its temporary name in ``out``.

    Each image is built and written uncompressed one at a time, so that no two of these large
    temporaries coexist; the compressions then run in parallel with the transform files (their
    memory is small, and zlib releases the GIL). Largest files first.
    """
    image_roles = [role for role in ANTS_FILE_NAMES if role in items and role not in _TRANSFORM_ROLES + ("qc",)]
    order = {"warp": 0, "inverse_warp": 1, "warped": 2, "inverse_warped": 3, "jacobian": 4}
    staged = []
    try:
        for role in sorted(image_roles, key=lambda r: order.get(r, 9)):
            if paths[role].lower().endswith(".nii.gz"):
                staged.append(stage_image(image(role), paths[role], inputs=inputs, caller=caller))
            else:
                out.write(paths[role], lambda tmp, r=role: write_image(image(r), tmp, caller=caller))
            release_freed_memory()   # the image's temporaries, before the next one's (core/memory.py)
        jobs: list = [lambda item=item: item.finish(into=out) for item in staged]
        if any(role in items for role in _TRANSFORM_ROLES):
            jobs.append(transforms_job)
        run_jobs(jobs, threads)
    finally:
        for item in staged:
            item.abort()


def write_ants_files(
    prefix: PathLike,
    items: Mapping[str, Any],
    *,
    inputs: Sequence[Any] = (),
    threads: Optional[int] = None,
    remove_stale: bool = False,
    caller: str = "write_ants_files()",
) -> dict[str, str]:
    """Write ``items`` (role -> object, or a zero-argument callable making it) under ANTs' names.

    Roles ``affine``, ``composite`` and ``inverse_composite`` take SimpleITK transforms; the
    image roles take SimpleITK images (written as float32 where they are scalar); ``qc``
    takes a callable that writes the figure to the path it is given. Images are built and
    written uncompressed one at a time (:func:`itk_odereg.io_utils.stage_image`), which keeps
    the peak memory low; their gzip compressions then run on a few threads (zlib releases the
    GIL), beside one job that writes the transform files one after the other (the HDF5
    library behind ITK's ``.h5`` writer is not thread-safe).

    The files are one unit (:class:`~itk_odereg.io_utils.OutputSet`): each is written under a
    hidden temporary name and checked, and only a complete set is moved into place; an error
    or an interrupt leaves the files under the final names as they were. With
    ``remove_stale``, files of the other roles under this prefix (left by an earlier run)
    are removed in the same step, with a warning, so that the prefix never mixes two
    registrations.

    Returns:
        role -> path of every file written.

    Raises:
        ValueError: an output that is one of ``inputs``, a missing directory, an unknown role.
    """
    import SimpleITK as sitk

    paths = check_output_prefix(prefix, items, inputs, caller)

    def resolved(role: str) -> Any:
        value = items[role]
        return value() if callable(value) and role != "qc" else value

    def image(role: str) -> Any:
        image = resolved(role)
        return sitk.Cast(image, sitk.sitkFloat32) if image.GetNumberOfComponentsPerPixel() == 1 else image

    out = OutputSet(caller, inputs)

    def transforms_job() -> None:
        for role in _TRANSFORM_ROLES:
            if role in items:
                transform = resolved(role)
                out.write(paths[role], lambda tmp, t=transform: sitk.WriteTransform(t, tmp),
                          read_back=sitk.ReadTransform if paths[role].lower().endswith(".mat") else None)

    with out:
        _write_members(out, paths, items, image, transforms_job, inputs, threads, caller)
        if "qc" in items:
            out.write(paths["qc"], items["qc"])
        stale = [path for role, path in ants_output_paths(os.fspath(prefix), ANTS_FILE_NAMES).items()
                 if remove_stale and role not in items]
        for path in out.commit(stale=stale):
            warnings.warn(f"{caller}: removed '{path}', left by an earlier run with this prefix, so that the "
                          "prefix holds the files of one registration only", stacklevel=2)
    return paths


# ---------------------------------------------------------------------------- from a Registration


def write_registration(
    reg: Registration,
    prefix: PathLike,
    *,
    fixed: Optional[LoadedImage] = None,
    moving: Optional[LoadedImage] = None,
    roles: Iterable[str] = _DEFAULT_ROLES,
    inputs: Sequence[Any] = (),
    threads: Optional[int] = None,
    warped: Optional[torch.Tensor] = None,
    caller: str = "write_registration()",
) -> dict[str, str]:
    """Write ``reg`` under ANTs' names: ``roles`` among :data:`ANTS_FILE_NAMES`.

    Args:
        reg: the registration.
        prefix: output prefix (``"out/sub01_"``); its directory must exist.
        fixed: the fixed image as loaded (``inverse_warped`` and ``qc`` need it).
        moving: the moving image as loaded, original intensities (``warped`` and ``qc`` need it).
        roles: which files to write (default: all but ``qc``).
        inputs: the caller's input paths, never overwritten.
        threads: writer threads (default: the CPU count, at most 4).
        warped: ``reg.warp(moving)`` when the caller already has it.

    Returns:
        role -> path of every file written.
    """
    from . import sitk as sitk_adapter

    roles = tuple(roles)
    for role, image, name in (("warped", moving, "moving"), ("inverse_warped", fixed, "fixed"),
                              ("qc", moving, "moving"), ("qc", fixed, "fixed")):
        if role in roles and image is None:
            raise ValueError(f"{caller}: the '{role}' output needs the {name} image as loaded ('{name}=')")
    if warped is None and ("warped" in roles or "qc" in roles):
        warped = reg.warp(moving.tensor, moving.grid)   # once, before the writer threads share it
        release_freed_memory()
    makers: dict[str, Any] = {
        "warped": lambda: sitk_adapter.image(warped, reg),
        "inverse_warped": lambda: _image_on(reg.inverse_warp(fixed.tensor, fixed.grid), reg.moving_grid),
        "affine": lambda: _affine_transform(reg),
        "warp": lambda: sitk_adapter.field_image(reg.displacement_mm, reg),
        "inverse_warp": lambda: sitk_adapter.field_image(reg.inverse_displacement_mm, reg),
        "composite": lambda: sitk_adapter.forward_transform(reg),
        "inverse_composite": lambda: sitk_adapter.inverse_transform(reg),
        "jacobian": lambda: sitk_adapter.image(torch.from_numpy(reg.jacobian_determinant)[None, None], reg),
    }
    if "qc" in roles:
        from ..qc import registration_qc_figure

        makers["qc"] = lambda path: registration_qc_figure(reg, fixed, moving, warped, path, inputs=inputs)
    return write_ants_files(prefix, {role: makers[role] for role in roles}, inputs=inputs, threads=threads,
                            remove_stale=True, caller=caller)


def _image_on(tensor: torch.Tensor, grid: Any) -> Any:
    from ..core.image import tensor_to_sitk

    return tensor_to_sitk(tensor.cpu(), grid)


def _affine_transform(reg: Registration) -> Any:
    from ..transforms import affine_matrix_to_sitk

    return affine_matrix_to_sitk(reg.affine_matrix, reg.affine_translation)


# ---------------------------------------------------------------------------- from field images


class AntsTransformFiles(NamedTuple):
    """Paths written by :func:`write_ants_transforms`, in ANTs' list orders.

    Attributes:
        fwdtransforms: ``[warp, affine]``: pass as ``transformlist`` to
            ``ants.apply_transforms(fixed, moving, ...)`` (or ``-t warp -t affine`` to
            ``antsApplyTransforms``): ``p -> A(W(p))``, ITK's composite ``[affine, warp]``.
        invtransforms: ``[affine, inverse_warp]`` (None when no inverse warp was written): pass
            with ``whichtoinvert=[True, False]`` (:data:`ANTS_INVERSE_WHICHTOINVERT`) to
            ``ants.apply_transforms(moving, fixed, ...)``: ``q -> W^-1(A^-1(q))``. antspyx only
            guesses that ``whichtoinvert`` when the first path contains ``".mat"`` and the
            second does not; pass it explicitly.
        affine: the ``<prefix>0GenericAffine.mat`` path.
        warp: the ``<prefix>1Warp.nii.gz`` path.
        inverse_warp: the ``<prefix>1InverseWarp.nii.gz`` path, or None.
    """

    fwdtransforms: list[str]
    invtransforms: list[str] | None
    affine: str
    warp: str
    inverse_warp: str | None

    @classmethod
    def from_paths(cls, paths: Mapping[str, str]) -> "AntsTransformFiles":
        inverse = paths.get("inverse_warp")
        return cls(fwdtransforms=[paths["warp"], paths["affine"]],
                   invtransforms=[paths["affine"], inverse] if inverse is not None else None,
                   affine=paths["affine"], warp=paths["warp"], inverse_warp=inverse)


def _as_field_image(obj: Any, name: str, d: int | None, caller: str) -> Any:
    import SimpleITK as sitk

    if isinstance(obj, sitk.DisplacementFieldTransform):
        obj = obj.GetDisplacementField()
    if not isinstance(obj, sitk.Image):
        raise TypeError(f"{caller}: '{name}' must be a SimpleITK vector image or DisplacementFieldTransform, "
                        f"got {type(obj).__name__}")
    if 0 in obj.GetSize():
        raise ValueError(f"{caller}: '{name}' is empty (was it passed to sitk.DisplacementFieldTransform, which empties it?)")
    dim = obj.GetDimension()
    if obj.GetNumberOfComponentsPerPixel() != dim or dim not in (2, 3):
        raise ValueError(
            f"{caller}: '{name}' must be a 2D/3D vector image with one component per dimension, got {dim}D with "
            f"{obj.GetNumberOfComponentsPerPixel()} components"
        )
    if d is not None and dim != d:
        raise ValueError(f"{caller}: '{name}' is {dim}D but the forward warp is {d}D")
    return obj


def write_ants_transforms(
    prefix: PathLike,
    affine: Any,
    warp_field_image: Any,
    inverse_warp_field_image: Any = None,
    *,
    inputs: Sequence[Any] = (),
) -> AntsTransformFiles:
    """Write an affine and displacement fields a caller made as ANTs does (``0GenericAffine.mat``, ``1Warp.nii.gz``
    [, ``1InverseWarp.nii.gz``]), through :func:`write_ants_files`.

    Args:
        prefix: output prefix (str or PathLike), concatenated as ANTs does; its directory must exist.
        affine: affine SimpleITK transform (any kind), an (A, t) pair, or None for identity; maps
            fixed-after-warp points to moving points (LPS mm).
        warp_field_image: SimpleITK vector image (or DisplacementFieldTransform) on the fixed grid:
            the forward physical displacement, LPS mm.
        inverse_warp_field_image: optional SimpleITK vector image of the inverse displacement.
        inputs: the caller's input paths (non-paths ignored); none of them may be overwritten.

    Returns:
        :class:`AntsTransformFiles`.

    Raises:
        ValueError: an output that is one of ``inputs``, a missing directory, or a malformed or empty field image.
        TypeError: wrong argument types.
    """
    from ..transforms import to_sitk_affine

    caller = "write_ants_transforms()"
    warp_img = _as_field_image(warp_field_image, "warp_field_image", None, caller)
    d = warp_img.GetDimension()
    items: dict[str, Any] = {"warp": warp_img}
    if inverse_warp_field_image is not None:
        items["inverse_warp"] = _as_field_image(inverse_warp_field_image, "inverse_warp_field_image", d, caller)
    items["affine"] = to_sitk_affine(affine, d, caller)
    if items["affine"].GetDimension() != d:
        raise ValueError(f"{caller}: 'affine' is {items['affine'].GetDimension()}D but the warp is {d}D")
    paths = write_ants_files(prefix, items, inputs=inputs, threads=1, caller=caller)
    return AntsTransformFiles.from_paths(paths)
