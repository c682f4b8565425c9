"""``ants_registration`` checked with antspyx itself.

``ants.apply_transforms`` must reproduce the returned images from the written
files, in both directions, on an oblique, anisotropic fixed grid and a moving
image on another grid. Registrations are tiny and cheap, shared per module.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

ants = pytest.importorskip("ants")

from itk_odereg.ants_compat import TYPE_OF_TRANSFORM, ants_registration  # noqa: E402
from itk_odereg.registration.affine import AffineSettings  # noqa: E402

CHEAP_AFFINE = AffineSettings(level_spacings_mm=(8.0,), rigid_iterations=(10,), affine_iterations=(5,), search_degrees=0)
CHEAP = dict(iterations=(10, 5), resolution_mm=None, affine_settings=CHEAP_AFFINE)


from synthetic_images import (  # noqa: E402
    assert_same_image,
    inner_mask,
    one_thread,  # noqa: F401  (autouse)
    write_oblique_pair,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("ants")
    paths = write_oblique_pair(d)
    return {"dir": d, "paths": paths, "fixed": ants.image_read(paths["fixed"]), "moving": ants.image_read(paths["moving"]),
            "fixed_sitk": sitk.ReadImage(paths["fixed"]), "moving_sitk": sitk.ReadImage(paths["moving"])}


@pytest.fixture(scope="module")
def syn(pair):
    prefix = str(pair["dir"] / "pair_")
    return prefix, ants_registration(pair["fixed"], pair["moving"], "SyN", outprefix=prefix, **CHEAP)


def _assert_close(actual, expected, mask, rel=1e-4):
    # ants .numpy() is (x, y, z); the mask from sitk is (z, y, x)
    assert_same_image(np.asarray(actual).T, np.asarray(expected).T, mask, rel)


def _field_transform(path):
    return sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64))


def _files_composite(affine_path, warp_path):
    """The forward map from the written files, built by SimpleITK: p -> A(W(p))."""
    return sitk.CompositeTransform([sitk.ReadTransform(affine_path), _field_transform(warp_path)])


def test_files_are_named_as_ants(syn):
    prefix, reg = syn
    assert set(reg) == {"warpedmovout", "warpedfixout", "fwdtransforms", "invtransforms"}
    assert reg["fwdtransforms"] == [prefix + "1Warp.nii.gz", prefix + "0GenericAffine.mat"]
    assert reg["invtransforms"] == [prefix + "0GenericAffine.mat", prefix + "1InverseWarp.nii.gz"]
    for path in reg["fwdtransforms"] + reg["invtransforms"]:
        assert os.path.isfile(path)
    assert not [f for f in os.listdir(os.path.dirname(prefix)) if ".tmp-" in f]


def test_warp_file_is_an_ants_displacement_field(pair, syn):
    nib = pytest.importorskip("nibabel")
    prefix, _ = syn
    img = nib.load(prefix + "1Warp.nii.gz")
    assert img.shape == tuple(pair["fixed_sitk"].GetSize()) + (1, 3)
    assert img.header.get_intent()[0] == "vector"


def test_warp_holds_the_deformable_part_only(pair, syn):
    prefix, _ = syn
    warp = sitk.GetArrayFromImage(sitk.ReadImage(prefix + "1Warp.nii.gz"))
    affine = sitk.ReadTransform(prefix + "0GenericAffine.mat")
    fixed = pair["fixed_sitk"]
    p = np.array(fixed.TransformIndexToPhysicalPoint((3, 4, 5)))
    affine_shift = np.linalg.norm(np.array(affine.TransformPoint(tuple(p))) - p)
    assert affine_shift > 2.0, "the test pair needs a noticeable affine"
    # the whole map is A(p + w(p)); the file holds w, much smaller than the affine's displacement
    assert np.abs(warp).max() < affine_shift


def test_apply_transforms_reproduces_warpedmovout(pair, syn):
    prefix, reg = syn
    out = ants.apply_transforms(pair["fixed"], pair["moving"], reg["fwdtransforms"], interpolator="linear")
    assert isinstance(reg["warpedmovout"], ants.ANTsImage)
    assert reg["warpedmovout"].shape == pair["fixed"].shape
    np.testing.assert_allclose(reg["warpedmovout"].spacing, pair["fixed"].spacing, rtol=1e-6)
    np.testing.assert_allclose(reg["warpedmovout"].direction, pair["fixed"].direction, atol=1e-6)
    transform = _files_composite(prefix + "0GenericAffine.mat", prefix + "1Warp.nii.gz")
    mask = inner_mask(pair["moving_sitk"], pair["fixed_sitk"], transform)
    _assert_close(reg["warpedmovout"].numpy(), out.numpy(), mask)


def test_apply_transforms_with_inverse_reproduces_warpedfixout(pair, syn):
    _, reg = syn
    out = ants.apply_transforms(pair["moving"], pair["fixed"], reg["invtransforms"], whichtoinvert=[True, False],
                                interpolator="linear")
    assert reg["warpedfixout"].shape == pair["moving"].shape
    inverse_affine = sitk.ReadTransform(reg["invtransforms"][0]).GetInverse()
    inverse_warp = _field_transform(reg["invtransforms"][1])
    inverse = sitk.CompositeTransform([inverse_warp, inverse_affine])  # q -> W^-1(A^-1(q))
    mask = inner_mask(pair["fixed_sitk"], pair["moving_sitk"], inverse)
    _assert_close(reg["warpedfixout"].numpy(), out.numpy(), mask)


def test_forward_and_inverse_files_are_inverse(pair, syn):
    prefix, reg = syn
    forward = _files_composite(prefix + "0GenericAffine.mat", prefix + "1Warp.nii.gz")
    inverse_warp = _field_transform(prefix + "1InverseWarp.nii.gz")
    inverse = sitk.CompositeTransform([inverse_warp, sitk.ReadTransform(prefix + "0GenericAffine.mat").GetInverse()])
    fixed = pair["fixed_sitk"]
    err = []
    for idx in np.ndindex(5, 4, 3):
        p = fixed.TransformIndexToPhysicalPoint(tuple(int(3 + 4 * i) for i in idx))
        err.append(np.linalg.norm(np.array(inverse.TransformPoint(forward.TransformPoint(p))) - p))
    assert np.mean(err) < 0.1 and np.max(err) < 0.3


def run_ants_apply_transforms(argv: list) -> None:
    """The antsApplyTransforms program on a file-based command line: the ANTs binary when
    it is on PATH, else the same program compiled into antspyx (``ants.lib``), which
    takes the command line as a list of strings."""
    exe = shutil.which("antsApplyTransforms")
    if exe is not None:
        subprocess.run([exe] + argv, check=True, capture_output=True)
        return
    from ants.internal import get_lib_fn

    assert get_lib_fn("antsApplyTransforms")(argv) == 0


def test_ants_apply_transforms_program_on_files(pair, syn, tmp_path):
    _, reg = syn
    out = str(tmp_path / "cli_warped.nii.gz")
    argv = ["-d", "3", "-i", pair["paths"]["moving"], "-r", pair["paths"]["fixed"], "-o", out, "-n", "Linear"]
    for t in reg["fwdtransforms"]:
        argv += ["-t", t]
    run_ants_apply_transforms(argv)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(out))
    np.testing.assert_allclose(reg["warpedmovout"].numpy().T, expected, atol=1e-3 * float(expected.max()))


@pytest.mark.parametrize("kind", ["Affine", "Rigid"])
def test_affine_only_types(pair, tmp_path, kind):
    prefix = str(tmp_path / f"{kind}_")
    reg = ants_registration(pair["paths"]["fixed"], pair["paths"]["moving"], kind, outprefix=prefix, **CHEAP)
    assert reg["fwdtransforms"] == [prefix + "0GenericAffine.mat"] == reg["invtransforms"]
    assert not os.path.exists(prefix + "1Warp.nii.gz")
    assert isinstance(reg["warpedmovout"], sitk.Image)  # paths in, SimpleITK out
    out = ants.apply_transforms(pair["fixed"], pair["moving"], reg["fwdtransforms"])
    np.testing.assert_allclose(sitk.GetArrayFromImage(reg["warpedmovout"]), out.numpy().T, atol=1e-3)
    back = ants.apply_transforms(pair["moving"], pair["fixed"], reg["invtransforms"], whichtoinvert=[True])
    np.testing.assert_allclose(sitk.GetArrayFromImage(reg["warpedfixout"]), back.numpy().T, atol=1e-3)
    matrix = np.array(sitk.ReadTransform(prefix + "0GenericAffine.mat").GetParameters()[:9]).reshape(3, 3)
    if kind == "Rigid":
        np.testing.assert_allclose(matrix.T @ matrix, np.eye(3), atol=1e-5)
        assert np.linalg.det(matrix) > 0


def test_synonly_has_identity_affine(pair, tmp_path):
    prefix = str(tmp_path / "synonly_")
    reg = ants_registration(pair["fixed_sitk"], pair["moving_sitk"], "SyNOnly", outprefix=prefix, **CHEAP)
    affine = sitk.ReadTransform(prefix + "0GenericAffine.mat")
    np.testing.assert_allclose(affine.GetParameters(), [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], atol=1e-12)
    out = ants.apply_transforms(pair["fixed"], pair["moving"], reg["fwdtransforms"])
    transform = _files_composite(prefix + "0GenericAffine.mat", prefix + "1Warp.nii.gz")
    mask = inner_mask(pair["moving_sitk"], pair["fixed_sitk"], transform)
    _assert_close(sitk.GetArrayFromImage(reg["warpedmovout"]).T, out.numpy(), mask)


def test_default_outprefix_is_a_new_temporary_directory(pair):
    reg = ants_registration(pair["fixed"], pair["moving"], "Rigid", **CHEAP)
    path = reg["fwdtransforms"][0]
    try:
        assert os.path.basename(path) == "0GenericAffine.mat"
        assert os.path.basename(os.path.dirname(path)).startswith("itk_odereg_")
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_bad_arguments(pair, tmp_path):
    allowed = re.escape(repr(list(TYPE_OF_TRANSFORM)))
    with pytest.raises(ValueError, match=r"invalid type_of_transform \"SyNAggro\". Must be one of " + allowed):
        ants_registration(pair["fixed"], pair["moving"], "SyNAggro")
    with pytest.raises(ValueError, match=r"invalid metric \"demons\""):
        ants_registration(pair["fixed"], pair["moving"], metric="demons")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'grad_step'"):
        ants_registration(pair["fixed"], pair["moving"], grad_step=0.2)
    with pytest.raises(ValueError, match=r"'moving' has 3 components per voxel"):
        ants_registration(pair["fixed"], ants.merge_channels([pair["moving"]] * 3))
    with pytest.raises(ValueError, match=r"outprefix does not exist"):
        ants_registration(pair["fixed"], pair["moving"], outprefix=str(tmp_path / "missing" / "x_"))


def test_never_overwrites_an_input(pair, tmp_path):
    prefix = str(tmp_path / "sub_")
    moving_path = prefix + "1Warp.nii.gz"  # an input that the outputs would overwrite
    shutil.copy(pair["paths"]["moving"], moving_path)
    before = open(moving_path, "rb").read()
    with pytest.raises(ValueError, match="refusing to overwrite input file"):
        ants_registration(pair["paths"]["fixed"], moving_path, "SyN", outprefix=prefix, **CHEAP)
    assert open(moving_path, "rb").read() == before
