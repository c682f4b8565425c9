"""SimpleITK / ITK / file inputs <-> (tensor, ImageGrid), and the bad-input errors."""
from __future__ import annotations

import os
from pathlib import Path

import itk
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from itk_odereg.core import ImageGrid, check_registrable, image_to_tensor, input_kind, load_image
from itk_odereg.core import tensor_to_input_kind, tensor_to_itk, tensor_to_sitk

DIRECTION_3D = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]]
)
GEOMS = {
    3: dict(spacing=(1.2, 0.9, 2.0), origin=(-10.0, 5.0, 20.0), direction=DIRECTION_3D),
    2: dict(spacing=(1.2, 0.9), origin=(-10.0, 5.0), direction=np.array([[0.8, -0.6], [0.6, 0.8]])),
}


def _make_sitk(ndim: int, dtype=np.int16) -> tuple[sitk.Image, np.ndarray]:
    shape = (5, 6, 7)[-ndim:] if ndim == 3 else (6, 7)
    rng = np.random.default_rng(ndim)
    arr = rng.integers(-100, 1000, size=shape).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    g = GEOMS[ndim]
    img.SetSpacing(g["spacing"])
    img.SetOrigin(g["origin"])
    img.SetDirection(g["direction"].ravel().tolist())
    return img, arr


@pytest.mark.parametrize("ndim", [2, 3])
def test_sitk_round_trip(ndim):
    img, arr = _make_sitk(ndim)
    loaded = load_image(img, "fixed", "register()")
    assert loaded.kind == "sitk" and loaded.path is None and loaded.dtype == np.int16
    assert loaded.tensor.shape == (1, 1) + arr.shape and loaded.tensor.dtype == torch.float32
    np.testing.assert_array_equal(loaded.tensor[0, 0].numpy(), arr.astype(np.float32))
    # tensor[k, j, i] is the ITK pixel (i, j, k)
    assert loaded.tensor[0, 0][(1, 2, 3)[:ndim]] == img.GetPixel([int(v) for v in (1, 2, 3)[:ndim][::-1]])
    assert loaded.grid == ImageGrid.from_sitk(img)
    back = tensor_to_sitk(loaded.tensor, loaded.grid, dtype=loaded.dtype)
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetOrigin() == img.GetOrigin() and back.GetSpacing() == img.GetSpacing()
    assert back.GetDirection() == img.GetDirection()
    as_float = tensor_to_input_kind(loaded.tensor, loaded.grid, loaded.kind)
    assert isinstance(as_float, sitk.Image) and as_float.GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_round_trip(ndim):
    img_s, arr = _make_sitk(ndim, np.float32)
    img = itk.image_from_array(arr)
    g = GEOMS[ndim]
    img.SetSpacing(g["spacing"])
    img.SetOrigin(g["origin"])
    img.SetDirection(itk.matrix_from_array(g["direction"].copy()))
    tensor, grid = image_to_tensor(img, "moving", "register()")
    assert input_kind(img) == "itk"
    np.testing.assert_array_equal(tensor[0, 0].numpy(), arr)
    assert grid == ImageGrid.from_sitk(img_s)
    back = tensor_to_input_kind(tensor, grid, "itk")
    assert isinstance(back, itk.Image[itk.F, ndim])
    np.testing.assert_array_equal(itk.array_from_image(back), arr)
    np.testing.assert_allclose(itk.array_from_matrix(back.GetDirection()), g["direction"], atol=0)
    assert tuple(back.GetOrigin()) == g["origin"] and tuple(back.GetSpacing()) == g["spacing"]
    # a float64 tensor gives a float64 ITK image
    assert isinstance(tensor_to_itk(tensor.double(), grid), itk.Image[itk.D, ndim])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_path_inputs(tmp_path, suffix):
    img, arr = _make_sitk(3)
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(img, str(path))
    for p in (str(path), path):
        loaded = load_image(p, "fixed", "register()")
        assert loaded.kind == "path" and loaded.path == str(path)
        np.testing.assert_array_equal(loaded.tensor[0, 0].numpy(), arr.astype(np.float32))
        assert loaded.grid.allclose(ImageGrid.from_sitk(img), atol=1e-5)  # NIfTI stores float32 geometry
    assert isinstance(tensor_to_input_kind(loaded.tensor, loaded.grid, "path"), sitk.Image)


def test_tensor_shapes_accepted_and_rejected():
    img, arr = _make_sitk(3, np.float32)
    grid = ImageGrid.from_sitk(img)
    t = torch.from_numpy(arr)
    for x in (t, t[None], t[None, None], arr):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(tensor_to_sitk(x, grid)), arr)
    with pytest.raises(ValueError, match=r"tensor_to_sitk\(\): 'tensor' must have spatial shape \(5, 6, 7\)"):
        tensor_to_sitk(t.transpose(0, 2), grid)
    with pytest.raises(ValueError, match="'kind' must be"):
        tensor_to_input_kind(t, grid, "nifti")


# ---------------------------------------------------------------------------- errors


def test_wrong_type():
    with pytest.raises(TypeError, match=r"register\(\): 'fixed' must be a SimpleITK.Image, an itk.Image or an image file path.*numpy.ndarray"):
        load_image(np.zeros((4, 4)), "fixed", "register()")
    with pytest.raises(TypeError, match="'moving' must be"):
        load_image(None, "moving", "register()")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(ValueError, match=r"register\(\): 'fixed' file not found: '.*nope\.nii\.gz'"):
        load_image(path, "fixed", "register()")
    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path, "fixed", "register()")
    with pytest.raises(ValueError, match="empty path"):
        load_image("", "fixed", "register()")


def test_unreadable_file_names_the_path(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"register\(\): 'moving' could not be read as an image from '.*garbage\.nii\.gz'"):
        load_image(str(path), "moving", "register()")


def test_4d_images():
    img4 = sitk.Image([3, 3, 3, 2], sitk.sitkFloat32)
    with pytest.raises(ValueError, match=r"register\(\): 'fixed' is a 4D image \(a time series\?\); only 2D and 3D"):
        load_image(img4, "fixed", "register()")
    itk4 = itk.image_from_array(np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="'fixed' is a 4D image"):
        load_image(itk4, "fixed", "register()")


def test_4d_file(tmp_path):
    path = str(tmp_path / "series.nii.gz")
    sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkFloat32), path)
    with pytest.raises(ValueError, match="'fixed' is a 4D image"):
        load_image(path, "fixed", "register()")


def test_vector_images():
    vec = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    with pytest.raises(ValueError, match=r"'fixed' has 3 components per voxel .*only scalar images"):
        load_image(vec, "fixed", "register()")
    rgb = sitk.Image([4, 4], sitk.sitkVectorUInt8, 3)
    with pytest.raises(ValueError, match="has 3 components per voxel"):
        load_image(rgb, "fixed", "register()")
    itk_vec = itk.image_from_array(np.zeros((4, 4, 2), np.float32), is_vector=True)
    with pytest.raises(ValueError, match="has 2 components per voxel"):
        load_image(itk_vec, "fixed", "register()")


def test_complex_and_label_map():
    with pytest.raises(ValueError, match="complex pixels"):
        load_image(sitk.Image([4, 4], sitk.sitkComplexFloat32), "fixed", "register()")
    with pytest.raises(ValueError, match="label map"):
        load_image(sitk.Image([4, 4], sitk.sitkLabelUInt8), "fixed", "register()")


def test_empty_image():
    with pytest.raises(ValueError, match=r"'fixed' is empty \(size \(0, 0\)"):
        load_image(sitk.Image(), "fixed", "register()")
    # an image handed to sitk.DisplacementFieldTransform is emptied the same way
    empty = itk.Image[itk.F, 3].New()
    with pytest.raises(ValueError, match="is empty"):
        load_image(empty, "fixed", "register()")


def test_nan_and_inf():
    arr = np.ones((4, 5, 6), np.float32)
    arr[0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="'fixed' has only NaN voxels"):
        load_image(sitk.GetImageFromArray(np.full((4, 5, 6), np.nan, np.float32)), "fixed", "register()")
    bad = arr.copy()
    bad[1, 1, 1] = np.nan
    bad[2, 2, 2] = np.inf
    bad[3, 3, 3] = -np.inf
    with pytest.raises(ValueError, match=r"'moving' has 1 NaN and 2 infinite voxel\(s\) of 120"):
        load_image(sitk.GetImageFromArray(bad), "moving", "register()")
    big = arr.astype(np.float64)
    big[0, 0, 1] = 1e300
    with pytest.raises(ValueError, match="infinite voxel.*after conversion to torch.float32"):
        load_image(sitk.GetImageFromArray(big), "moving", "register()")
    # float64 keeps it
    t, _ = image_to_tensor(sitk.GetImageFromArray(big), dtype=torch.float64)
    assert t.dtype == torch.float64 and t.max() == 1e300


def test_check_registrable():
    check_registrable(torch.rand(1, 1, 4, 5, 6), "fixed", "register()")
    check_registrable(torch.rand(1, 1, 4, 5) * 1e-8, "fixed", "register()")  # faint but real contrast passes
    with pytest.raises(ValueError, match=r"register\(\): 'fixed' is constant \(every voxel is 0\): there is no image content"):
        check_registrable(torch.zeros(1, 1, 4, 5, 6), "fixed", "register()")
    with pytest.raises(ValueError, match=r"'moving' is constant \(every voxel is 5\)"):
        check_registrable(torch.full((1, 1, 4, 5), 5.0), "moving", "register()")
    t = torch.rand(1, 1, 3, 3)
    t[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        check_registrable(t, "fixed", "register()")
    with pytest.raises(ValueError, match="is empty"):
        check_registrable(torch.zeros(1, 1, 0, 3), "fixed", "register()")
    with pytest.raises(TypeError, match="floating-point torch.Tensor"):
        check_registrable(torch.zeros(3, 3, dtype=torch.int32), "fixed", "register()")
    # load_image itself accepts a constant image: that decision is the caller's
    loaded = load_image(sitk.Image([4, 4], sitk.sitkFloat32), "fixed", "register()")
    assert float(loaded.tensor.abs().sum()) == 0.0


def test_bool_and_integer_pixels(tmp_path):
    arr = np.zeros((4, 5), np.uint8)
    arr[1:3, 1:4] = 1
    t, _ = image_to_tensor(sitk.GetImageFromArray(arr))
    np.testing.assert_array_equal(t[0, 0].numpy(), arr.astype(np.float32))
    assert not os.listdir(tmp_path)  # nothing written anywhere by loading
    assert input_kind(Path("x.nii")) == "path" and input_kind(3) is None


def test_staged_image_gives_the_bytes_of_write_image_and_cleans_up(tmp_path):
    from itk_odereg.io_utils import stage_image, write_image

    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32))
    image.SetSpacing((1.5, 2.0, 2.5))
    direct = write_image(image, tmp_path / "direct.nii.gz")
    staged = stage_image(image, tmp_path / "staged.nii.gz")
    assert not os.path.exists(tmp_path / "staged.nii.gz")          # nothing under the final name yet
    assert staged.finish() == str(tmp_path / "staged.nii.gz")
    assert Path(direct).read_bytes() == (tmp_path / "staged.nii.gz").read_bytes()
    aborted = stage_image(image, tmp_path / "aborted.nii.gz")
    aborted.abort()
    assert sorted(os.listdir(tmp_path)) == ["direct.nii.gz", "staged.nii.gz"]   # no hidden temporaries left
    with pytest.raises(ValueError, match="refusing to overwrite input file"):
        stage_image(image, tmp_path / "direct.nii.gz", inputs=[direct])
