"""A drop-in for ``ants.registration`` backed by the NODEO engine.

:func:`ants_registration` takes the arguments ``ants.registration`` takes
(``fixed``, ``moving``, ``type_of_transform``, ``outprefix``), writes the files
ANTs writes (``<prefix>0GenericAffine.mat``, ``<prefix>1Warp.nii.gz``,
``<prefix>1InverseWarp.nii.gz``) and returns the same dictionary, so scripts
written for antspyx keep working::

    reg = ants_registration(fixed, moving, "SyN")
    warped = ants.apply_transforms(fixed, moving, reg["fwdtransforms"])
    back = ants.apply_transforms(moving, fixed, reg["invtransforms"], whichtoinvert=[True, False])

Transform lists follow ANTs (``docs/methods.md`` section 3): the **last listed
transform is applied to the image first**; equivalently a point of the output
(reference) grid, in LPS mm, goes through the **first listed transform first**.
``fwdtransforms = [warp, affine]`` maps a fixed point ``p``
to ``A(W(p))`` in the moving image; ``invtransforms = [affine, inverse warp]``
with ``whichtoinvert=[True, False]`` maps a moving point ``q`` to
``W^-1(A^-1(q))``. The warp files hold the **deformable part only**
(``Registration.displacement_mm`` and ``inverse_displacement_mm``) on the
fixed grid, so that the affine is not applied twice.

``type_of_transform`` mapping:

============== ====================== ============================================
ANTs name      pre-alignment          deformable stage / files
============== ====================== ============================================
``"SyN"``      affine (rigid, affine) NODEO; ``.mat`` + ``1Warp`` + ``1InverseWarp``
``"SyNOnly"``  none                   NODEO; identity ``.mat`` + both warps
``"ElasticOnly"`` none                same as ``"SyNOnly"`` (the NODEO flow is the
                                      only deformable model here)
``"Affine"``   affine (rigid, affine) stage ``none``; ``.mat`` only
``"Rigid"``    rigid                  stage ``none``; ``.mat`` only
============== ====================== ============================================

For ``"Affine"``/``"Rigid"`` the lists are ``fwdtransforms = [affine]`` and
``invtransforms = [affine]`` (pass ``whichtoinvert=[True]``), as in ANTs. ANTs
writes ``0Warp.nii.gz`` (no ``.mat``) for ``"SyNOnly"``; here an identity
``0GenericAffine.mat`` keeps the file names of ``"SyN"``.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from .core.image import LoadedImage, load_image

__all__ = ["ants_registration", "TYPE_OF_TRANSFORM", "ANTS_METRICS", "is_ants_image"]

#: ``type_of_transform`` -> (linear stage or None, deformable stage), from :data:`itk_odereg.registration.stages.STAGES`.
TYPE_OF_TRANSFORM: dict[str, tuple[Optional[str], str]] = {
    "SyN": ("affine", "nodeo"),
    "SyNOnly": (None, "nodeo"),
    "ElasticOnly": (None, "nodeo"),
    "Affine": ("affine", "none"),
    "Rigid": ("rigid", "none"),
}

#: ANTs metric names (lower case) accepted for ``metric`` besides ours.
ANTS_METRICS = {"cc": "lncc", "mattes": "mi", "meansquares": "mse", "lncc": "lncc", "mi": "mi", "mse": "mse", "ngf": "ngf"}

_REGISTER_KEYWORDS = ("device", "iterations", "steps", "seed", "reproducible", "resolution_mm", "nodeo",
                      "affine_settings")
_ANTS_ALIASES = {"random_seed": "seed"}


def is_ants_image(obj: Any) -> bool:
    """Whether ``obj`` is an ``ants.ANTsImage`` (without importing antspyx)."""
    return type(obj).__name__ == "ANTsImage" and (type(obj).__module__ or "").startswith("ants")


def _load(image: Any, name: str, caller: str) -> LoadedImage:
    """An ANTsImage, SimpleITK image, ITK image or file path as a tensor on its grid."""
    if is_ants_image(image):
        import ants

        if int(image.components) != 1:
            raise ValueError(f"{caller}: '{name}' has {int(image.components)} components per voxel; "
                             "only scalar images are supported")
        if image.dimension not in (2, 3):
            raise ValueError(f"{caller}: '{name}' is a {image.dimension}D image; only 2D and 3D images are supported")
        image = ants.to_sitk(image)
    return load_image(image, name, caller)


def _to_output(image: Any, want_ants: bool) -> Any:
    if not want_ants:
        return image
    import ants

    return ants.from_sitk(image)


def _default_prefix() -> str:
    # Like antspyx (a fresh temporary name), but in a new directory of its own.
    return os.path.join(tempfile.mkdtemp(prefix="itk_odereg_"), "")


def _registration_options(type_of_transform: str, metric: str, kwargs: dict, caller: str):
    """(RegistrationOptions, deformable method) of :func:`ants_registration`'s arguments.

    Checks ``type_of_transform``, then ``metric`` (ours or ANTs' names, any case), then the
    keyword arguments (ANTs' aliases such as ``random_seed`` renamed to ours).
    """
    from .registration.options import RegistrationOptions

    if type_of_transform not in TYPE_OF_TRANSFORM:
        raise ValueError(f'{caller}: invalid type_of_transform "{type_of_transform}". '
                         f"Must be one of {list(TYPE_OF_TRANSFORM)}")
    metric_key = str(metric).lower()
    if metric_key not in ANTS_METRICS:
        raise ValueError(f'{caller}: invalid metric "{metric}". Must be one of {sorted(ANTS_METRICS)}')
    values: dict = {}
    for key, value in kwargs.items():
        key = _ANTS_ALIASES.get(key, key)
        if key not in _REGISTER_KEYWORDS:
            raise TypeError(f"{caller}: unexpected keyword argument '{key}'. "
                            f"Accepted: {sorted(_REGISTER_KEYWORDS + tuple(_ANTS_ALIASES))}")
        values[key] = value
    affine_mode, method = TYPE_OF_TRANSFORM[type_of_transform]
    options = RegistrationOptions.create(caller, metric=ANTS_METRICS[metric_key], affine=affine_mode, method=method,
                                         **values)
    return options, method


def _ants_outputs(registration, fixed_in: LoadedImage, moving_in: LoadedImage, paths: dict, deformable: bool,
                  want_ants: bool) -> dict:
    """The dictionary ``ants.registration`` returns: both warped images (linear; ANTsImage when
    ``want_ants``, else SimpleITK float32) and the transform lists in ANTs' order (last listed
    applied to the image first; see the module docstring), from the written ``paths`` by role."""
    from .adapters import sitk as sitk_adapter
    from .core.image import tensor_to_sitk

    if deformable:
        fwd, inv = [paths["warp"], paths["affine"]], [paths["affine"], paths["inverse_warp"]]
    else:
        fwd, inv = [paths["affine"]], [paths["affine"]]
    warped_moving = sitk_adapter.image(registration.warp(moving_in.tensor, moving_in.grid), registration)
    warped_fixed = tensor_to_sitk(registration.inverse_warp(fixed_in.tensor, fixed_in.grid).cpu(), moving_in.grid)
    return {
        "warpedmovout": _to_output(warped_moving, want_ants),
        "warpedfixout": _to_output(warped_fixed, want_ants),
        "fwdtransforms": list(fwd),
        "invtransforms": list(inv),
    }


def ants_registration(
    fixed: Any,
    moving: Any,
    type_of_transform: str = "SyN",
    outprefix: Optional[str] = None,
    *,
    metric: str = "lncc",
    verbose: bool = False,
    **kwargs: Any,
) -> dict:
    """Register ``moving`` to ``fixed`` and return what ``ants.registration`` returns.

    Args:
        fixed: ``ants.ANTsImage``, ``SimpleITK.Image``, ``itk.Image`` or an image
            file path (2D/3D scalar).
        moving: likewise, on any grid.
        type_of_transform: ``"SyN"`` (default), ``"SyNOnly"``, ``"ElasticOnly"``,
            ``"Affine"`` or ``"Rigid"`` (see the module docstring for the mapping).
        outprefix: prefix of the written files, concatenated as ANTs does
            (``"out/sub01_"`` gives ``out/sub01_0GenericAffine.mat``); its directory
            must exist. Default: a new temporary directory.
        metric: ``"lncc"`` (default), ``"mse"``, ``"mi"``, ``"ngf"``, or the ANTs
            names ``"CC"``, ``"mattes"``, ``"meansquares"``.
        verbose: print a progress bar to stderr.
        **kwargs: options of :class:`itk_odereg.registration.options.RegistrationOptions`:
            ``device``, ``iterations``, ``steps``, ``seed`` (ANTs' ``random_seed``
            too), ``resolution_mm``, ``nodeo``, ``affine_settings``.

    Returns:
        dict with

        * ``"warpedmovout"``: moving image on the fixed grid (linear);
        * ``"warpedfixout"``: fixed image on the moving grid, through the inverse;
        * ``"fwdtransforms"``: ``[warp, affine]`` (``[affine]`` for Affine/Rigid);
        * ``"invtransforms"``: ``[affine, inverse warp]``, to use with
          ``whichtoinvert=[True, False]`` (``[affine]`` with ``[True]``).

        Images are ``ants.ANTsImage`` when ``fixed`` or ``moving`` is one, else
        ``SimpleITK.Image`` (float32).

    Raises:
        ValueError: unknown ``type_of_transform`` or metric (listing the allowed
            values), bad images, or an output that would overwrite an input.
        TypeError: unknown keyword arguments.
        RuntimeError: ``device="cuda"`` without a CUDA device.
    """
    from .adapters.ants import check_output_prefix, write_registration
    from .registration.engine import register_images

    caller = "ants_registration()"
    options, method = _registration_options(type_of_transform, metric, kwargs, caller)
    fixed_in = _load(fixed, "fixed", caller)
    moving_in = _load(moving, "moving", caller)

    prefix = _default_prefix() if outprefix is None else os.fspath(outprefix)
    roles = ("affine", "warp", "inverse_warp") if method != "none" else ("affine",)
    # before the registration, so that a bad prefix fails at once
    check_output_prefix(prefix, roles, [fixed, moving], caller, directory_label="the directory of outprefix")

    registration = register_images(fixed_in, moving_in, options, progress=bool(verbose), caller=caller)
    paths = write_registration(registration, prefix, roles=roles, inputs=[fixed, moving], threads=1, caller=caller)
    return _ants_outputs(registration, fixed_in, moving_in, paths, method != "none",
                         is_ants_image(fixed) or is_ants_image(moving))
