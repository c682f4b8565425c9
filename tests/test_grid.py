"""ImageGrid against SimpleITK's and ITK's own index <-> physical point maps (2D and 3D, oblique, anisotropic)."""
from __future__ import annotations

import pickle

import itk
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from itk_odereg.core import ALIGN_CORNERS, Axes, ImageGrid
from synthetic_images import rot2 as _rotation2d, rot3 as _rotation


GEOMETRIES = {
    "3d": dict(size=(12, 10, 7), spacing=(1.2, 0.9, 2.0), origin=(-10.5, 5.25, 20.0), direction=_rotation(0.3, -0.2, 0.5)),
    # a left-handed (det -1) direction, as in many radiological scans
    "3d_flip": dict(size=(9, 11, 6), spacing=(0.7, 1.3, 2.5), origin=(3.0, -4.0, 1.5), direction=_rotation(0.1, 0.2, -0.4) @ np.diag([1, -1, 1])),
    "2d": dict(size=(13, 9), spacing=(1.2, 0.8), origin=(-3.0, 7.5), direction=_rotation2d(0.4)),
}


def _sitk_image(geom: dict, pixel=sitk.sitkFloat32) -> sitk.Image:
    img = sitk.Image(list(geom["size"]), pixel)
    img.SetSpacing(geom["spacing"])
    img.SetOrigin(geom["origin"])
    img.SetDirection(np.asarray(geom["direction"], dtype=float).ravel().tolist())
    return img


def _itk_image(geom: dict, start=None):
    d = len(geom["size"])
    img = itk.Image[itk.F, d].New()
    region = itk.ImageRegion[d]()
    region.SetSize(list(geom["size"]))
    if start is not None:
        region.SetIndex(list(start))
    img.SetRegions(region)
    img.Allocate()
    img.SetSpacing(list(geom["spacing"]))
    img.SetOrigin(list(geom["origin"]))
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(geom["direction"], dtype=float)))
    return img


@pytest.fixture(params=sorted(GEOMETRIES))
def geom(request):
    return GEOMETRIES[request.param]


def _hom(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = m.shape[0] - 1
    return m[:d, :d] @ p + m[:d, d]


def test_index_to_world_matches_sitk(geom):
    img = _sitk_image(geom)
    grid = ImageGrid.from_sitk(img)
    rng = np.random.default_rng(1)
    i2w, w2i = grid.index_to_world(), grid.world_to_index()
    assert i2w.shape == (grid.ndim + 1,) * 2 and i2w.dtype == np.float64
    for idx in rng.uniform(-3, 15, size=(20, grid.ndim)):
        expected = np.array(img.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
        np.testing.assert_allclose(_hom(i2w, idx), expected, rtol=0, atol=1e-12)
        back = np.array(img.TransformPhysicalPointToContinuousIndex(expected.tolist()))
        np.testing.assert_allclose(_hom(w2i, expected), back, rtol=0, atol=1e-10)
        np.testing.assert_allclose(back, idx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(i2w @ w2i, np.eye(grid.ndim + 1), atol=1e-12)


def test_index_to_world_matches_itk(geom):
    img = _itk_image(geom)
    grid = ImageGrid.from_itk(img)
    i2w = grid.index_to_world()
    for idx in [(0,) * grid.ndim, tuple(s - 1 for s in grid.size), (3, 2, 1)[: grid.ndim]]:
        expected = np.array(img.TransformIndexToPhysicalPoint([int(v) for v in idx]))
        np.testing.assert_allclose(_hom(i2w, np.array(idx, float)), expected, rtol=0, atol=1e-12)
    cidx = itk.ContinuousIndex[itk.D, grid.ndim]()
    for j, v in enumerate((2.25, -0.5, 4.75)[: grid.ndim]):
        cidx.SetElement(j, v)
    expected = np.array(img.TransformContinuousIndexToPhysicalPoint(cidx))
    np.testing.assert_allclose(_hom(i2w, np.array([cidx.GetElement(j) for j in range(grid.ndim)])), expected, atol=1e-12)


def test_from_sitk_and_from_itk_agree(geom, tmp_path):
    """The same file read by SimpleITK and by ITK gives the same grid (NRRD keeps float64 geometry)."""
    img = _sitk_image(geom)
    path = str(tmp_path / "g.nrrd")
    sitk.WriteImage(img, path)
    g_sitk = ImageGrid.from_sitk(sitk.ReadImage(path))
    g_itk = ImageGrid.from_itk(itk.imread(path))
    assert g_sitk.size == g_itk.size == tuple(geom["size"])
    assert g_sitk.allclose(g_itk, atol=1e-12)
    assert ImageGrid.from_sitk(img) == ImageGrid.from_itk(_itk_image(geom))
    assert ImageGrid.from_sitk(img) == ImageGrid(**geom)


def test_itk_nonzero_start_index():
    """ITK regions may start at a non-zero index; grid index 0 must be the first buffered voxel."""
    geom = GEOMETRIES["3d"]
    img = _itk_image(geom, start=(2, 3, 4))
    arr = itk.array_view_from_image(img)
    arr[...] = np.arange(arr.size, dtype=np.float32).reshape(arr.shape)
    grid = ImageGrid.from_itk(img)
    assert grid.shape == arr.shape
    np.testing.assert_allclose(
        grid.transform_points(np.zeros(3), Axes.INDEX, Axes.WORLD), np.array(img.TransformIndexToPhysicalPoint([2, 3, 4])), atol=1e-12
    )
    # tensor element [k, j, i] is ITK index start + (i, j, k)
    k, j, i = 3, 1, 5
    assert img.GetPixel([2 + i, 3 + j, 4 + k]) == arr[k, j, i]
    np.testing.assert_allclose(
        grid.transform_points(np.array([k, j, i], float), Axes.VOXEL, Axes.WORLD),
        np.array(img.TransformIndexToPhysicalPoint([2 + i, 3 + j, 4 + k])),
        atol=1e-12,
    )


def test_torch_order_voxels(geom):
    """Tensor position (k, j, i) of GetArrayFromImage is ITK index (i, j, k)."""
    img = _sitk_image(geom)
    arr = np.arange(int(np.prod(geom["size"])), dtype=np.float32).reshape(tuple(geom["size"])[::-1])
    img2 = sitk.GetImageFromArray(arr)
    img2.CopyInformation(img)
    grid = ImageGrid.from_sitk(img2)
    assert grid.shape == arr.shape and grid.size == tuple(img2.GetSize())
    v2w = grid.voxel_to_world_matrix_torch_order()
    w2v = grid.world_to_voxel_matrix_torch_order()
    for pos in [(0,) * grid.ndim, tuple(n - 1 for n in grid.shape), (1, 2, 3)[: grid.ndim]]:
        itk_idx = [int(v) for v in pos[::-1]]
        assert img2.GetPixel(itk_idx) == arr[pos]
        world = np.array(img2.TransformIndexToPhysicalPoint(itk_idx))
        np.testing.assert_allclose(_hom(v2w, np.array(pos, float)), world, atol=1e-12)
        np.testing.assert_allclose(_hom(w2v, world), pos, atol=1e-10)
    # world_points is the same map on the whole grid
    pts = grid.world_points()
    assert pts.shape == grid.shape + (grid.ndim,)
    last = tuple(n - 1 for n in grid.shape)
    np.testing.assert_allclose(pts[last], img2.TransformIndexToPhysicalPoint([int(v) for v in last[::-1]]), atol=1e-12)


def test_all_frames_round_trip(geom):
    grid = ImageGrid(**geom)
    rng = np.random.default_rng(2)
    pts = rng.uniform(-2, 10, size=(7, grid.ndim))
    for a in Axes:
        for b in Axes:
            m = grid.transform(a, b) @ grid.transform(b, a)
            np.testing.assert_allclose(m, np.eye(grid.ndim + 1), atol=1e-12)
            np.testing.assert_allclose(grid.transform_points(grid.transform_points(pts, a, b), b, a), pts, atol=1e-10)
    np.testing.assert_allclose(grid.transform("voxel", "world"), grid.voxel_to_world_matrix_torch_order())


def test_normalized_frame_matches_grid_sample(geom):
    """Axes.NORMALIZED is grid_sample's frame with align_corners=True (components x, y, z)."""
    assert ALIGN_CORNERS is True
    grid = ImageGrid(**geom)
    image = torch.rand((1, 1) + grid.shape, dtype=torch.float64)
    rng = np.random.default_rng(3)
    vox = rng.uniform(0, 1, size=(5, grid.ndim)) * (np.array(grid.shape) - 1)
    norm = grid.transform_points(vox, Axes.VOXEL, Axes.NORMALIZED)
    g = torch.from_numpy(norm).reshape((1,) + (1,) * (grid.ndim - 1) + (5, grid.ndim))
    sampled = torch.nn.functional.grid_sample(image, g, mode="bilinear", align_corners=ALIGN_CORNERS).flatten()
    # reference: multilinear interpolation at the voxel positions
    from scipy.ndimage import map_coordinates

    ref = map_coordinates(image[0, 0].numpy(), vox.T, order=1)
    np.testing.assert_allclose(sampled.numpy(), ref, atol=1e-12)
    # the corner voxel centres are at +-1
    np.testing.assert_allclose(grid.transform_points(np.zeros(grid.ndim), Axes.INDEX, Axes.NORMALIZED), -1.0)
    np.testing.assert_allclose(grid.transform_points(np.array(grid.size, float) - 1, Axes.INDEX, Axes.NORMALIZED), 1.0)


def test_extent_center_and_references(geom):
    grid = ImageGrid(**geom)
    img = grid.to_sitk_reference()
    assert ImageGrid.from_sitk(img) == grid and img.GetPixelID() == sitk.sitkFloat32
    assert ImageGrid.from_itk(grid.to_itk_reference()) == grid
    center_idx = ((np.array(grid.size) - 1) / 2.0).tolist()
    np.testing.assert_allclose(grid.center, img.TransformContinuousIndexToPhysicalPoint(center_idx), atol=1e-12)
    np.testing.assert_allclose(grid.physical_extent, np.array(grid.size) * np.array(geom["spacing"]))
    corners = grid.corners()
    assert corners.shape == (2**grid.ndim, grid.ndim)
    lo = img.TransformContinuousIndexToPhysicalPoint([-0.5] * grid.ndim)
    hi = img.TransformContinuousIndexToPhysicalPoint([n - 0.5 for n in grid.size])
    np.testing.assert_allclose(corners[0], lo, atol=1e-12)
    np.testing.assert_allclose(corners[-1], hi, atol=1e-12)


def test_corner_aligned_resampling_of_a_linear_ramp(geom):
    """sitk.Resample onto the coarse grid samples the same physical positions the grid reports."""
    grid = ImageGrid(**geom)
    coeff = np.array([0.3, -0.7, 0.2])[: grid.ndim]
    arr = (grid.world_points() @ coeff).astype(np.float64)
    img = sitk.GetImageFromArray(arr)
    grid.apply_to_sitk(img)
    low = grid.corner_aligned(2)
    out = sitk.GetArrayFromImage(sitk.Resample(img, low.to_sitk_reference(sitk.sitkFloat64), sitk.Transform(), sitk.sitkLinear))
    expected = low.world_points() @ coeff
    # linear interpolation of a linear function is exact where all neighbours are inside
    inside = np.all(
        (grid.transform_points(low.world_points(), Axes.WORLD, Axes.INDEX) >= 0)
        & (grid.transform_points(low.world_points(), Axes.WORLD, Axes.INDEX) <= np.array(grid.size) - 1),
        axis=-1,
    )
    assert inside.sum() > 0
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-9)


def test_world_points_at_is_a_slice_of_world_points(geom):
    """Flat C-order index ranges, on oblique and left-handed grids too: the same float64 values."""
    grid = ImageGrid.from_sitk(_sitk_image(geom))
    whole = grid.world_points().reshape(-1, grid.ndim)
    for start, stop in ((0, grid.numel), (0, 1), (7, 7), (5, 101), (grid.numel - 3, grid.numel)):
        assert np.array_equal(grid.world_points_at(start, stop), whole[start:stop])
    with pytest.raises(ValueError, match=r"world_points_at\(\): need 0 <= start <= stop"):
        grid.world_points_at(3, grid.numel + 1)
    with pytest.raises(ValueError, match="world_points_at"):
        grid.world_points_at(5, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=(4, 5, 6, 7)), r"ImageGrid\(\) 'size' must be a sequence of 2 or 3 integers"),
        (dict(size=(4,)), r"ImageGrid\(\) 'size' must be a sequence of 2 or 3"),
        (dict(size=(4, 0, 2)), r"ImageGrid\(\) 'size' must be positive, got \(4, 0, 2\)"),
        (dict(size=(4, 2.5, 2)), r"ImageGrid\(\) 'size' must contain integers"),
        (dict(size=(4, 5, 6), spacing=(1.0, -1.0, 1.0)), r"ImageGrid\(\) 'spacing' must be positive, got \[1.0, -1.0, 1.0\]"),
        (dict(size=(4, 5, 6), spacing=0.0), r"ImageGrid\(\) 'spacing' must be positive"),
        (dict(size=(4, 5, 6), spacing=(1.0, 1.0)), r"ImageGrid\(\) 'spacing' must have 3 values"),
        (dict(size=(4, 5, 6), origin=(0.0, np.nan, 0.0)), r"ImageGrid\(\) 'origin' must be finite"),
        (dict(size=(4, 5), direction=np.eye(3)), r"ImageGrid\(\) 'direction' must be a 2x2 matrix"),
        (dict(size=(4, 5), direction=[[1, 0], [1, 0]]), r"ImageGrid\(\) 'direction' must be invertible"),
    ],
)
def test_validation_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageGrid(**kwargs)


def test_other_call_site_errors():
    grid = ImageGrid((4, 5, 6))
    with pytest.raises(TypeError, match=r"ImageGrid.from_sitk\(\) 'image' must be a SimpleITK.Image"):
        ImageGrid.from_sitk(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"ImageGrid.from_sitk\(\) 'image' must be 2D or 3D, got 4D"):
        ImageGrid.from_sitk(sitk.Image([2, 2, 2, 2], sitk.sitkFloat32))
    with pytest.raises(ValueError, match=r"ImageGrid.apply_to_sitk\(\) image size"):
        grid.apply_to_sitk(sitk.Image([4, 5, 7], sitk.sitkFloat32))
    with pytest.raises(ValueError, match="last dimension 3"):
        grid.transform_points(np.zeros((2, 2)), "index", "world")


def test_immutable_hashable_picklable():
    grid = ImageGrid(**GEOMETRIES["3d"])
    with pytest.raises(AttributeError):
        grid.size = (1, 2, 3)
    grid.spacing[0] = 5.0  # a copy: the grid is unchanged
    grid.direction[0, 0] = 7.0
    assert grid.spacing[0] == 1.2 and grid.direction[0, 0] != 7.0
    # the copies are writable, which itk.matrix_from_array needs (it segfaults on read-only arrays)
    np.testing.assert_array_equal(itk.array_from_matrix(itk.matrix_from_array(grid.direction)), grid.direction)
    same = ImageGrid(**GEOMETRIES["3d"])
    assert grid == same and hash(grid) == hash(same) and len({grid, same}) == 1
    assert grid != ImageGrid(**{**GEOMETRIES["3d"], "origin": (0.0, 0.0, 0.0)})
    assert pickle.loads(pickle.dumps(grid)) == grid
    # the flat row-major tuple of sitk.Image.GetDirection() is accepted
    flat = ImageGrid(grid.size, grid.spacing, grid.origin, tuple(grid.direction.ravel()))
    assert flat == grid
    assert "ImageGrid(size=(12, 10, 7)" in repr(grid)
    # -0.0 and 0.0 (SimpleITK reports -0.0 cosines for flipped axes) are equal and hash equally
    a = ImageGrid((2, 3), 1.0, (0.0, -0.0), [[-1.0, 0.0], [-0.0, 1.0]])
    b = ImageGrid((2, 3), 1.0, (0.0, 0.0), [[-1.0, 0.0], [0.0, 1.0]])
    assert a == b and hash(a) == hash(b)


# ---------------------------------------------------------------------------- corner-aligned levels


def test_corner_aligned_level_is_the_one_formula_of_derived_grids():
    from itk_odereg.core.levels import corner_aligned_level

    # pyramid level: ceil((n - 1) / f) + 1 voxels, at least 2, singleton axes stay
    assert corner_aligned_level((81, 96, 1), (2.0, 2.0, 3.0), factor=2.0) == ((41, 49, 1), (4.0, 95 * 2.0 / 48, 3.0))
    # the factor is applied to voxel counts, not to mm: 9 * 0.7 / (0.7 * 1.5) is 6.000000000000001 in floating
    # point, which would round up to 8 voxels instead of 7
    assert corner_aligned_level((10,), (0.7,), factor=1.5)[0] == (7,)
    # NODEO control grid: a target spacing, at least 3 nodes, a singleton axis too
    assert corner_aligned_level((81, 1), (2.0, 2.0), target_spacing_mm=6.0, min_size=3,
                                keep_singleton_axes=False) == ((28, 3), (160 / 27, 6.0))
    # the MS-ODENet model grid: rounded to the nearest (as the shipped models were trained), at least 8
    assert corner_aligned_level((97, 9), (1.0, 1.0), target_spacing_mm=2.0, rounding="round", min_size=8)[0] == (49, 8)
    with pytest.raises(ValueError, match="exactly one of"):
        corner_aligned_level((5,), (1.0,))
    with pytest.raises(ValueError, match="'rounding' must be"):
        corner_aligned_level((5,), (1.0,), factor=2.0, rounding="floor")


def test_image_grid_corner_aligned_keeps_the_outer_voxel_centres():
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    grid = ImageGrid((81, 60, 33), (1.0, 1.5, 3.0), (10.0, -5.0, 2.0), direction)
    coarse = grid.corner_aligned(2.5)
    # per axis (core.levels.axis_factors): the target is 2.5 x the finest spacing, 2.5 mm; the
    # 1.5 mm axis is shrunk by 5/3 and the 3 mm axis, already coarser, not at all
    assert coarse.size == (33, 37, 33)
    np.testing.assert_allclose(coarse.spacing, (2.5, 59 * 1.5 / 36, 3.0))
    for corner in ((0, 0, 0), (80, 59, 32)):
        fine_point = grid.origin + direction @ (np.asarray(corner) * grid.spacing)
        coarse_index = np.asarray([0, 0, 0]) if corner == (0, 0, 0) else np.asarray(coarse.size) - 1
        np.testing.assert_allclose(coarse.origin + direction @ (coarse_index * coarse.spacing), fine_point, atol=1e-9)
