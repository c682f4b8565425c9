"""Physical-space transforms against the tools themselves: SimpleITK, ITK, ANTs and the ops.

Every expected value is computed through the tools' own index <-> point maps
(``TransformContinuousIndexToPhysicalPoint`` and friends) and plain
``scipy.ndimage.map_coordinates`` linear interpolation, never through the code
under test. Grids are anisotropic and oblique with non-zero origins, and the
moving grid differs from the fixed one.
"""
from __future__ import annotations

import os

import itk
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import map_coordinates

from itk_odereg.core import ImageGrid
from itk_odereg.io_utils import atomic_write, split_extension
from itk_odereg.ops import warp
from itk_odereg.adapters.ants import ANTS_INVERSE_WHICHTOINVERT, write_ants_transforms
from itk_odereg.transforms import (
    affine_from_transform,
    affine_matrix_to_itk,
    affine_matrix_to_sitk,
    affine_to_dense_displacement,
    displacement_field_from_image,
    displacement_field_image,
    displacement_field_itk_image,
    itk_composite,
    itk_displacement_transform,
    physical_displacement_to_voxel,
    sitk_composite,
    sitk_displacement_transform,
    transform_to_dense_displacement,
    voxel_displacement_to_physical,
    write_composite_h5,
    write_transform,
)
from synthetic_images import rot2 as _rot2, rot3 as _rot3


# ---------------------------------------------------------------------------- fixtures






def _grid_around(center, size, spacing, direction):
    size, spacing = np.asarray(size), np.asarray(spacing, float)
    origin = np.asarray(center) - direction @ (spacing * (size - 1) / 2)
    return ImageGrid(tuple(int(s) for s in size), spacing, origin, direction)


def _case(ndim):
    """(fixed grid, moving grid, affine A, t): oblique, anisotropic, different grids."""
    if ndim == 3:
        fixed = ImageGrid((12, 10, 8), (1.2, 0.9, 2.0), (-10.0, 5.0, 20.0), _rot3(0.3, -0.2, 0.5))
        moving = _grid_around(fixed.center + [0.7, -0.4, 0.3], (16, 14, 11), (1.0, 1.1, 1.8), _rot3(-0.1, 0.25, 0.35))
        A = _rot3(0.08, -0.05, 0.1) @ np.diag([1.04, 0.97, 1.02])
        t = np.array([0.8, -0.6, 0.5])
    else:
        fixed = ImageGrid((14, 11), (1.2, 0.9), (-10.0, 5.0), _rot2(0.4))
        moving = _grid_around(fixed.center + [0.5, -0.3], (18, 15), (1.0, 1.1), _rot2(-0.2))
        A = _rot2(0.1) @ np.diag([1.05, 0.96])
        t = np.array([0.7, -0.5])
    # an affine close to identity around the fixed centre (p -> A p + t with the rotation centred there)
    t = t + fixed.center - A @ fixed.center
    return fixed, moving, A, t


def _smooth_u_vox(grid, amp=1.3, seed=0):
    """A smooth voxel displacement [d, *shape] (tensor-order channels)."""
    rng = np.random.default_rng(seed)
    pos = grid.voxel_coordinates() / np.array(grid.shape)  # in [0, 1)
    u = np.empty((grid.ndim,) + grid.shape)
    for c in range(grid.ndim):
        w = rng.uniform(0.5, 1.5, grid.ndim)
        u[c] = amp * np.sin(2 * np.pi * pos @ w + rng.uniform(0, 2 * np.pi))
    return u


def _image_function(points):
    """A smooth, non-linear test intensity of physical position (..., d)."""
    x = points
    out = np.sin(0.45 * x[..., 0]) * np.cos(0.3 * x[..., 1]) + 0.02 * x[..., 0] * x[..., 1]
    if x.shape[-1] == 3:
        out = out + np.sin(0.2 * x[..., 2] + 0.3)
    return out.astype(np.float32) + 2.0


def _sitk_image(arr, grid):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(grid.spacing.tolist())
    img.SetOrigin(grid.origin.tolist())
    img.SetDirection(grid.direction.ravel().tolist())
    return img


def _moving_sitk(moving):
    return _sitk_image(_image_function(moving.world_points()), moving)


def _displaced_points_via_sitk(fixed_img, u_vox):
    """p + d(p) for every fixed voxel, through SimpleITK's own continuous-index map: index + u (x, y, z order)."""
    shape = u_vox.shape[1:]
    out = np.empty(shape + (len(shape),))
    for pos in np.ndindex(*shape):
        cidx = np.array(pos[::-1], float) + u_vox[(slice(None),) + pos][::-1]
        out[pos] = fixed_img.TransformContinuousIndexToPhysicalPoint(cidx.tolist())
    return out


def _sample_via_sitk(moving_img, points):
    """Linear sampling of ``moving_img`` at physical points, as ITK does it (0 outside the [-0.5, n-0.5] box).

    Returns (values, ok) where ok excludes points within 1e-6 voxel of the box boundary (ambiguous inside test).
    """
    arr = sitk.GetArrayFromImage(moving_img).astype(np.float64)
    n = np.array(moving_img.GetSize(), float)
    flat = points.reshape(-1, points.shape[-1])
    cidx = np.array([moving_img.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in flat])
    inside = np.all((cidx >= -0.5) & (cidx <= n - 0.5), axis=1)
    margin = np.min(np.minimum(np.abs(cidx + 0.5), np.abs(n - 0.5 - cidx)), axis=1)
    vals = map_coordinates(arr, cidx[:, ::-1].T, order=1, mode="nearest")
    vals = np.where(inside, vals, 0.0)
    shape = points.shape[:-1]
    return vals.reshape(shape), (margin > 1e-6).reshape(shape), inside.reshape(shape)


def _itk_image(arr, grid):
    img = itk.image_from_array(np.ascontiguousarray(arr))
    img.SetSpacing(grid.spacing.tolist())
    img.SetOrigin(grid.origin.tolist())
    img.SetDirection(itk.matrix_from_array(grid.direction))
    return img


def _resample_itk(moving_img, fixed_grid, tx):
    """itk.ResampleImageFilter (linear interpolation, default value 0) onto ``fixed_grid``.

    The template is named explicitly: the snake_case ``itk.resample_image_filter`` costs ~10 s of
    lazy module loading on first use here.
    """
    image_type = type(moving_img)
    f = itk.ResampleImageFilter[image_type, image_type].New()
    f.SetInput(moving_img)
    f.SetTransform(tx)
    f.SetUseReferenceImage(True)
    f.SetReferenceImage(_itk_image(np.zeros(fixed_grid.shape, np.float32), fixed_grid))
    f.Update()
    return itk.array_from_image(f.GetOutput())


def _resample_sitk(moving_img, fixed_grid, tx):
    ref = _sitk_image(np.zeros(fixed_grid.shape, np.float32), fixed_grid)
    return sitk.GetArrayFromImage(sitk.Resample(moving_img, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


# ---------------------------------------------------------------------------- voxel <-> physical


@pytest.mark.parametrize("ndim", [2, 3])
def test_voxel_to_physical_matches_sitk_index_map(ndim):
    """p + u_phys(p) is SimpleITK's physical point of the continuous index (i, j, k) + u_vox[::-1]."""
    fixed, _, _, _ = _case(ndim)
    u = _smooth_u_vox(fixed)
    field = voxel_displacement_to_physical(torch.from_numpy(u).float()[None], fixed)
    assert field.shape == fixed.shape + (ndim,) and field.dtype == np.float64
    fixed_img = _sitk_image(np.zeros(fixed.shape, np.float32), fixed)
    expected = _displaced_points_via_sitk(fixed_img, u.astype(np.float32).astype(np.float64))
    pts = np.array([fixed_img.TransformIndexToPhysicalPoint([int(v) for v in pos[::-1]]) for pos in np.ndindex(*fixed.shape)])
    np.testing.assert_allclose(pts.reshape(expected.shape) + field, expected, atol=1e-10)
    back = physical_displacement_to_voxel(field, fixed)
    np.testing.assert_allclose(back, u.astype(np.float32), atol=1e-10)


def test_shape_errors():
    fixed, _, _, _ = _case(3)
    with pytest.raises(ValueError, match=r"voxel_displacement_to_physical\(\): 'u_vox' must have shape \(3, 8, 10, 12\)"):
        voxel_displacement_to_physical(np.zeros((3, 12, 10, 8)), fixed)
    with pytest.raises(ValueError, match=r"physical_displacement_to_voxel\(\): 'field' must have shape \(8, 10, 12, 3\)"):
        physical_displacement_to_voxel(np.zeros((3, 8, 10, 12)), fixed)
    with pytest.raises(ValueError, match="non-finite"):
        displacement_field_image(np.full(fixed.shape + (3,), np.nan), fixed)


# ---------------------------------------------------------------------------- resampling with displacement fields


@pytest.mark.parametrize("ndim", [2, 3])
def test_sitk_displacement_resample_matches_manual_sampling(ndim):
    fixed, moving, _, _ = _case(ndim)
    u = _smooth_u_vox(fixed)
    field = voxel_displacement_to_physical(u, fixed)
    moving_img = _moving_sitk(moving)
    tx = sitk_displacement_transform(field, fixed)
    out = _resample_sitk(moving_img, fixed, tx)

    fixed_img = _sitk_image(np.zeros(fixed.shape, np.float32), fixed)
    expected, ok, inside = _sample_via_sitk(moving_img, _displaced_points_via_sitk(fixed_img, u))
    assert inside.mean() > 0.6 and (~inside).sum() > 0  # most points inside, some outside (zero) too
    np.testing.assert_allclose(out[ok], expected[ok], atol=2e-5)
    # and the warp was not a no-op
    assert np.abs(out - _resample_sitk(moving_img, fixed, sitk.Transform(ndim, sitk.sitkIdentity))).max() > 0.1


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_displacement_resample_matches_manual_sampling(ndim):
    fixed, moving, _, _ = _case(ndim)
    u = _smooth_u_vox(fixed, seed=1)
    field = voxel_displacement_to_physical(u, fixed)
    moving_arr = _image_function(moving.world_points())
    tx = itk_displacement_transform(field, fixed)
    out = _resample_itk(_itk_image(moving_arr, moving), fixed, tx)
    fixed_img = _sitk_image(np.zeros(fixed.shape, np.float32), fixed)
    expected, ok, _ = _sample_via_sitk(_sitk_image(moving_arr, moving), _displaced_points_via_sitk(fixed_img, u))
    np.testing.assert_allclose(out[ok], expected[ok], atol=2e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_field_images_sitk_and_itk(ndim):
    fixed, _, _, _ = _case(ndim)
    field = voxel_displacement_to_physical(_smooth_u_vox(fixed), fixed)
    img = displacement_field_image(field, fixed)
    assert img.GetPixelID() == sitk.sitkVectorFloat64 and img.GetNumberOfComponentsPerPixel() == ndim
    assert ImageGrid.from_sitk(img) == fixed
    pos = (1, 2, 3)[:ndim]
    np.testing.assert_array_equal(img.GetPixel([int(v) for v in pos[::-1]]), field[pos])
    itk_img = displacement_field_itk_image(field, fixed)
    assert isinstance(itk_img, itk.Image[itk.Vector[itk.D, ndim], ndim])
    np.testing.assert_array_equal(np.array(itk_img.GetPixel([int(v) for v in pos[::-1]])), field[pos])
    assert ImageGrid.from_itk(itk_img) == fixed
    for source in (img, itk_img):
        f2, g2 = displacement_field_from_image(source)
        np.testing.assert_array_equal(f2, field)
        assert g2 == fixed


def test_sitk_displacement_transform_does_not_consume_the_callers_image():
    """sitk.DisplacementFieldTransform(img) empties img; ours passes a copy."""
    fixed, _, _, _ = _case(3)
    img = displacement_field_image(voxel_displacement_to_physical(_smooth_u_vox(fixed), fixed), fixed)
    raw = sitk.Image(img)
    sitk.DisplacementFieldTransform(raw)
    assert 0 in raw.GetSize()  # the pitfall itself (it even becomes an empty 2D image)
    tx = sitk_displacement_transform(img)
    assert img.GetSize() == fixed.size
    tx32 = sitk_displacement_transform(sitk.Cast(img, sitk.sitkVectorFloat32))
    p = fixed.world_points()[2, 3, 4]
    np.testing.assert_allclose(tx.TransformPoint(p.tolist()), tx32.TransformPoint(p.tolist()), atol=1e-5)


# ---------------------------------------------------------------------------- same grid: ops.warp == sitk.Resample


@pytest.mark.parametrize("ndim", [2, 3])
def test_ops_warp_equals_sitk_resample_on_the_same_grid(ndim):
    """Ties the ops' voxel convention to ITK's physical one."""
    fixed, _, _, _ = _case(ndim)
    u = _smooth_u_vox(fixed, amp=1.6, seed=2)
    moving_arr = _image_function(fixed.world_points())
    out_sitk = _resample_sitk(_sitk_image(moving_arr, fixed), fixed, sitk_displacement_transform(voxel_displacement_to_physical(u, fixed), fixed))
    out_ops = warp(torch.from_numpy(moving_arr)[None, None].double(), torch.from_numpy(u)[None]).numpy()[0, 0]
    target = fixed.voxel_coordinates() + np.moveaxis(u, 0, -1)
    interior = np.all((target >= 1e-6) & (target <= np.array(fixed.shape) - 1 - 1e-6), axis=-1)
    assert interior.mean() > 0.5
    np.testing.assert_allclose(out_ops[interior], out_sitk[interior], atol=2e-5)


# ---------------------------------------------------------------------------- affine and composites


def test_composite_order_sitk_and_itk():
    """Both SimpleITK and ITK apply the last added transform first."""
    scale = np.diag([2.0, 1.0, 1.0])
    shift = np.array([10.0, 0.0, 0.0])
    a_s = affine_matrix_to_sitk(scale, shift)
    t_s = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    # A(T(0)) = 2 * 1 + 10 = 12; T(A(0)) = 11
    assert sitk.CompositeTransform([a_s, t_s]).TransformPoint((0.0, 0.0, 0.0))[0] == 12.0
    a_i = affine_matrix_to_itk(scale, shift)
    t_i = itk.TranslationTransform[itk.D, 3].New()
    t_i.SetOffset([1.0, 0.0, 0.0])
    c_i = itk.CompositeTransform[itk.D, 3].New()
    c_i.AddTransform(a_i)
    c_i.AddTransform(t_i)
    assert c_i.TransformPoint([0.0, 0.0, 0.0])[0] == 12.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_conversions(ndim):
    fixed, _, A, t = _case(ndim)
    rng = np.random.default_rng(4)
    pts = rng.uniform(-50, 50, (5, ndim))
    for center in (None, fixed.center, rng.uniform(-20, 20, ndim)):
        tx_s = affine_matrix_to_sitk(A, t, center)
        tx_i = affine_matrix_to_itk(A, t, center)
        if center is not None:
            np.testing.assert_allclose(tx_s.GetCenter(), center)
        for p in pts:
            np.testing.assert_allclose(tx_s.TransformPoint(p.tolist()), A @ p + t, atol=1e-10)
            np.testing.assert_allclose(np.array(tx_i.TransformPoint(p.tolist())), A @ p + t, atol=1e-10)
        for tx in (tx_s, tx_i):
            A2, t2 = affine_from_transform(tx)
            np.testing.assert_allclose(A2, A, atol=1e-12)
            np.testing.assert_allclose(t2, t, atol=1e-10)
    # any linear SimpleITK transform
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0)) if ndim == 3 else sitk.Euler2DTransform((1.0, 2.0), 0.3, (4.0, 5.0))
    A3, t3 = affine_from_transform(euler)
    np.testing.assert_allclose(A3, np.reshape(euler.GetMatrix(), (ndim, ndim)), atol=1e-12)
    np.testing.assert_allclose(A3 @ np.ones(ndim) + t3, euler.TransformPoint([1.0] * ndim), atol=1e-10)
    # dense affine displacement against SimpleITK's TransformPoint at the voxel centres
    dense = affine_to_dense_displacement(A, t, fixed)
    ref = _sitk_image(np.zeros(fixed.shape, np.float32), fixed)
    for pos in [(0,) * ndim, tuple(n - 1 for n in fixed.shape), (2, 3, 4)[:ndim]]:
        p = np.array(ref.TransformIndexToPhysicalPoint([int(v) for v in pos[::-1]]))
        np.testing.assert_allclose(dense[pos], np.array(tx_s.TransformPoint(p.tolist())) - p, atol=1e-10)
    np.testing.assert_allclose(transform_to_dense_displacement(tx_s, fixed), dense, atol=1e-10)


def test_affine_from_transform_refuses_a_warp():
    fixed, _, _, _ = _case(3)
    tx = sitk_displacement_transform(voxel_displacement_to_physical(_smooth_u_vox(fixed), fixed), fixed)
    with pytest.raises(ValueError, match="not affine"):
        affine_from_transform(sitk.CompositeTransform([sitk.AffineTransform(3), tx]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_composites_map_p_to_A_of_W_of_p(ndim):
    """[affine, warp] maps p to A(p + d(p)) in SimpleITK and ITK, pointwise and when resampling."""
    fixed, moving, A, t = _case(ndim)
    u = _smooth_u_vox(fixed, seed=3)
    field = voxel_displacement_to_physical(u, fixed)
    fixed_img = _sitk_image(np.zeros(fixed.shape, np.float32), fixed)
    warped_pts = _displaced_points_via_sitk(fixed_img, u)  # p + d(p), via SimpleITK's index map
    expected_pts = warped_pts @ A.T + t
    comp_s = sitk_composite(affine_matrix_to_sitk(A, t, fixed.center), sitk_displacement_transform(field, fixed))
    comp_i = itk_composite(affine_matrix_to_itk(A, t, fixed.center), itk_displacement_transform(field, fixed))
    comp_pair = sitk_composite((A, t), displacement_field_image(field, fixed))
    wrong_order = sitk.CompositeTransform([sitk_displacement_transform(field, fixed), affine_matrix_to_sitk(A, t)])
    worst_wrong = 0.0
    for pos, p in zip(np.ndindex(*fixed.shape), fixed.world_points().reshape(-1, ndim)):
        np.testing.assert_allclose(comp_s.TransformPoint(p.tolist()), expected_pts[pos], atol=1e-9)
        np.testing.assert_allclose(np.array(comp_i.TransformPoint(p.tolist())), expected_pts[pos], atol=1e-9)
        np.testing.assert_allclose(comp_pair.TransformPoint(p.tolist()), expected_pts[pos], atol=1e-9)
        worst_wrong = max(worst_wrong, np.abs(np.array(wrong_order.TransformPoint(p.tolist())) - expected_pts[pos]).max())
    assert worst_wrong > 0.1  # the order matters for this case

    moving_img = _moving_sitk(moving)
    expected, ok, _ = _sample_via_sitk(moving_img, expected_pts)
    np.testing.assert_allclose(_resample_sitk(moving_img, fixed, comp_s)[ok], expected[ok], atol=2e-5)
    out_i = _resample_itk(_itk_image(sitk.GetArrayFromImage(moving_img), moving), fixed, comp_i)
    np.testing.assert_allclose(out_i[ok], expected[ok], atol=2e-5)


# ---------------------------------------------------------------------------- writers


def _registration_outputs(ndim):
    fixed, moving, A, t = _case(ndim)
    field = voxel_displacement_to_physical(_smooth_u_vox(fixed, seed=5), fixed)
    inv_field = voxel_displacement_to_physical(_smooth_u_vox(fixed, amp=0.8, seed=6), fixed)
    affine = affine_matrix_to_sitk(A, t, fixed.center)
    return fixed, moving, affine, displacement_field_image(field, fixed), displacement_field_image(inv_field, fixed)


def _write_inputs(tmp_path, fixed, moving, suffix=".nii.gz"):
    fixed_path = str(tmp_path / f"fixed{suffix}")
    moving_path = str(tmp_path / f"moving{suffix}")
    sitk.WriteImage(_sitk_image(_image_function(fixed.world_points()), fixed), fixed_path)
    sitk.WriteImage(_moving_sitk(moving), moving_path)
    return fixed_path, moving_path


@pytest.mark.parametrize("ndim", [2, 3])
def test_write_ants_transforms_read_back(tmp_path, ndim):
    fixed, moving, affine, warp_img, inv_img = _registration_outputs(ndim)
    fixed_path, moving_path = _write_inputs(tmp_path, fixed, moving, ".nrrd")
    files = write_ants_transforms(str(tmp_path / "reg_"), affine, warp_img, inv_img, inputs=[fixed_path, moving_path])
    assert files.fwdtransforms == [str(tmp_path / "reg_1Warp.nii.gz"), str(tmp_path / "reg_0GenericAffine.mat")]
    assert files.invtransforms == [str(tmp_path / "reg_0GenericAffine.mat"), str(tmp_path / "reg_1InverseWarp.nii.gz")]
    assert ANTS_INVERSE_WHICHTOINVERT == (True, False)
    # atomic writes leave nothing else behind
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["fixed.nrrd", "moving.nrrd", "reg_0GenericAffine.mat", "reg_1Warp.nii.gz", "reg_1InverseWarp.nii.gz"]
    )
    with open(files.affine, "rb") as fh:
        assert f"AffineTransform_double_{ndim}_{ndim}".encode() in fh.read()
    nib = pytest.importorskip("nibabel")
    hdr = nib.load(files.warp).header
    assert int(hdr["intent_code"]) == 1007
    assert tuple(int(v) for v in hdr["dim"][: hdr["dim"][0] + 1]) == (5,) + fixed.size + (1,) * (3 - ndim) + (1, ndim)

    # read back with SimpleITK: same map, same resampling (NIfTI keeps the geometry in float32)
    warp_r = sitk.ReadImage(files.warp)
    assert warp_r.GetPixelID() == sitk.sitkVectorFloat64
    assert ImageGrid.from_sitk(warp_r).allclose(fixed, atol=1e-5)
    comp = sitk_composite(affine, warp_img)
    comp_r = sitk_composite(sitk.ReadTransform(files.affine), warp_r)
    moving_img = sitk.ReadImage(moving_path)
    np.testing.assert_allclose(_resample_sitk(moving_img, fixed, comp_r), _resample_sitk(moving_img, fixed, comp), atol=1e-4)


def test_write_ants_transforms_refuses_to_overwrite_inputs(tmp_path):
    fixed, moving, affine, warp_img, inv_img = _registration_outputs(3)
    victim = tmp_path / "reg_1Warp.nii.gz"
    victim.write_bytes(b"precious")
    with pytest.raises(ValueError, match=r"write_ants_transforms\(\): refusing to overwrite input file '.*reg_1Warp\.nii\.gz'"):
        write_ants_transforms(str(tmp_path / "reg_"), affine, warp_img, inv_img, inputs=[str(victim)])
    assert victim.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["reg_1Warp.nii.gz"]  # checked before writing anything
    # through a symbolic link too
    link = tmp_path / "link.mat"
    os.symlink(tmp_path / "reg_0GenericAffine.mat", link)
    (tmp_path / "reg_0GenericAffine.mat").write_bytes(b"mine")
    with pytest.raises(ValueError, match="refusing to overwrite input file"):
        write_ants_transforms(tmp_path / "reg_", affine, warp_img, inputs=[str(link), None, sitk.Image()])
    assert (tmp_path / "reg_0GenericAffine.mat").read_bytes() == b"mine"


def test_write_ants_transforms_argument_errors(tmp_path):
    fixed, _, affine, warp_img, _ = _registration_outputs(3)
    with pytest.raises(ValueError, match="output directory does not exist"):
        write_ants_transforms(str(tmp_path / "missing" / "reg_"), affine, warp_img)
    emptied = sitk.Image(warp_img)
    sitk.DisplacementFieldTransform(emptied)
    with pytest.raises(ValueError, match="'warp_field_image' is empty"):
        write_ants_transforms(str(tmp_path / "reg_"), affine, emptied)
    with pytest.raises(ValueError, match="'warp_field_image' must be a 2D/3D vector image"):
        write_ants_transforms(str(tmp_path / "reg_"), affine, sitk.Image([3, 3, 3], sitk.sitkFloat32))
    with pytest.raises(ValueError, match="'affine' is 2D but the warp is 3D"):
        write_ants_transforms(str(tmp_path / "reg_"), sitk.AffineTransform(2), warp_img)
    # identity affine and no inverse
    files = write_ants_transforms(str(tmp_path / "id_"), None, warp_img)
    assert files.invtransforms is None and files.inverse_warp is None
    A, t = affine_from_transform(sitk.ReadTransform(files.affine))
    np.testing.assert_allclose(A, np.eye(3))
    np.testing.assert_allclose(t, 0)


def test_atomic_write_cleans_up(tmp_path):
    dest = tmp_path / "out.nii.gz"
    dest.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(dest, failing)
    assert dest.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.nii.gz"]
    with pytest.raises(RuntimeError, match="did not create"):
        atomic_write(dest, lambda tmp: None)
    seen = []

    def writer(tmp):
        seen.append(tmp)
        sitk.WriteImage(sitk.Image([2, 2], sitk.sitkFloat32), tmp)

    atomic_write(dest, writer)
    assert seen[0].endswith(".nii.gz") and os.path.dirname(seen[0]) == str(tmp_path)
    assert sitk.ReadImage(str(dest)).GetSize() == (2, 2) and os.listdir(tmp_path) == ["out.nii.gz"]
    with pytest.raises(ValueError, match="refusing to overwrite input file"):
        atomic_write(dest, writer, inputs=[str(dest)])
    assert split_extension("a/sub.01_1Warp.nii.gz") == ("sub.01_1Warp", ".nii.gz")
    assert split_extension("x.mat") == ("x", ".mat") and split_extension("noext") == ("noext", "")


@pytest.mark.parametrize("ndim", [2, 3])
def test_composite_h5_round_trip(tmp_path, ndim):
    fixed, moving, affine, warp_img, _ = _registration_outputs(ndim)
    comp = sitk_composite(affine, warp_img)
    path = write_composite_h5(tmp_path / "reg.h5", comp, inputs=[str(tmp_path / "fixed.nii.gz")])
    assert os.listdir(tmp_path) == ["reg.h5"]
    back = sitk.ReadTransform(path)
    back_itk = itk.transformread(path)[0]
    for p in fixed.world_points().reshape(-1, ndim)[::7]:
        np.testing.assert_allclose(back.TransformPoint(p.tolist()), comp.TransformPoint(p.tolist()), atol=1e-9)
        np.testing.assert_allclose(np.array(back_itk.TransformPoint(p.tolist())), comp.TransformPoint(p.tolist()), atol=1e-9)
    with pytest.raises(ValueError, match=r"must end in \.h5"):
        write_composite_h5(tmp_path / "reg.mat", comp)
    # an ITK composite written by us is read by SimpleITK
    field, _ = displacement_field_from_image(warp_img)
    A, t = affine_from_transform(affine)
    comp_i = itk_composite((A, t), itk_displacement_transform(field, fixed))
    p2 = write_transform(tmp_path / "reg_itk.h5", comp_i)
    back2 = sitk.ReadTransform(p2)
    q = fixed.world_points().reshape(-1, ndim)[5]
    np.testing.assert_allclose(back2.TransformPoint(q.tolist()), comp.TransformPoint(q.tolist()), atol=1e-9)


# ---------------------------------------------------------------------------- ANTs


def _ants_to_torch_order(arr):
    """ANTsImage.numpy() is in ITK index order (x, y, z): reverse to (z, y, x)."""
    return np.transpose(arr)


@pytest.mark.parametrize("ndim", [2, 3])
def test_ants_apply_transforms_matches_sitk(tmp_path, ndim):
    ants = pytest.importorskip("ants")
    fixed, moving, affine, warp_img, inv_img = _registration_outputs(ndim)
    fixed_path, moving_path = _write_inputs(tmp_path, fixed, moving)
    files = write_ants_transforms(str(tmp_path / "reg_"), affine, warp_img, inv_img, inputs=[fixed_path, moving_path])
    fixed_s, moving_s = sitk.ReadImage(fixed_path), sitk.ReadImage(moving_path)
    fixed_a, moving_a = ants.image_read(fixed_path), ants.image_read(moving_path)
    fixed_read = ImageGrid.from_sitk(fixed_s)

    # forward: moving onto the fixed grid, ANTs [warp, affine] == ITK [affine, warp]
    out_a = _ants_to_torch_order(ants.apply_transforms(fixed_a, moving_a, transformlist=files.fwdtransforms, interpolator="linear").numpy())
    comp = sitk_composite(sitk.ReadTransform(files.affine), sitk.ReadImage(files.warp))
    out_s = _resample_sitk(moving_s, fixed_read, comp)
    assert out_a.shape == out_s.shape and np.abs(out_s).max() > 1
    np.testing.assert_allclose(out_a, out_s, atol=1e-4)
    # the other order would differ
    wrong = sitk.CompositeTransform([sitk_displacement_transform(sitk.ReadImage(files.warp)), sitk.ReadTransform(files.affine)])
    assert np.abs(_resample_sitk(moving_s, fixed_read, wrong) - out_a).max() > 0.05

    # inverse: fixed onto the moving grid, ANTs [affine^-1, inverse warp] == ITK [inverse warp, affine^-1]
    out_ai = _ants_to_torch_order(
        ants.apply_transforms(
            moving_a, fixed_a, transformlist=files.invtransforms, whichtoinvert=list(ANTS_INVERSE_WHICHTOINVERT), interpolator="linear"
        ).numpy()
    )
    inv_comp = sitk.CompositeTransform(
        [sitk_displacement_transform(sitk.ReadImage(files.inverse_warp)), sitk.ReadTransform(files.affine).GetInverse()]
    )
    out_si = _resample_sitk(fixed_s, ImageGrid.from_sitk(moving_s), inv_comp)
    assert np.abs(out_si).max() > 1
    np.testing.assert_allclose(out_ai, out_si, atol=1e-4)
