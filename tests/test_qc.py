"""QC figure: planes named from the image direction (checked against SimpleITK's
orientation codes), one PNG per call, written atomically, inputs protected.

No registration runs here: the images, displacement and Jacobian are synthetic.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("matplotlib")

from itk_odereg.core import ImageGrid  # noqa: E402
from itk_odereg.qc import qc_figure, slice_planes  # noqa: E402
from synthetic_images import rot3 as _rot3  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"




def _image(grid: ImageGrid, shift=0.0):
    points = grid.world_points()
    c = grid.center
    values = np.exp(-np.sum(((points - c - shift) / 12.0) ** 2, -1))
    image = sitk.GetImageFromArray(values.astype(np.float32))
    return grid.apply_to_sitk(image)


def _case(ndim=3):
    if ndim == 3:
        fixed = ImageGrid((24, 20, 16), (1.5, 2.0, 2.5), (5.0, -3.0, 8.0), _rot3(0.2, -0.1, 0.15))
        moving = ImageGrid((20, 22, 18), (2.0, 1.8, 2.2), (0.0, -6.0, 4.0), _rot3(-0.1, 0.1, -0.2))
    else:
        fixed = ImageGrid((40, 30), (1.5, 2.0), (5.0, -3.0))
        moving = ImageGrid((36, 34), (1.8, 1.7), (2.0, -6.0))
    rng = np.random.default_rng(0)
    pos = fixed.voxel_coordinates() / np.array(fixed.shape)
    field = np.stack([3.0 * np.sin(2 * np.pi * (pos @ rng.uniform(0.5, 1.5, ndim))) for _ in range(ndim)], -1)
    jac = 1.0 + 0.4 * np.sin(2 * np.pi * pos[..., 0])
    jac.flat[0] = -0.1  # one folded voxel
    return _image(fixed), _image(moving, 2.0), _image(fixed, 0.5), jac, field, fixed


@pytest.mark.parametrize(
    "direction",
    [np.eye(3), _rot3(0.3, -0.2, 0.25), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
     np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])],
    ids=["identity", "oblique", "sagittal-stack", "coronal-stack"],
)
def test_planes_follow_the_orientation_code(direction):
    grid = ImageGrid((10, 11, 12), 1.0, 0.0, direction)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction.ravel().tolist())
    # letter k of the code is the anatomical axis ITK axis k runs along
    plane_for_letter = {"L": "sagittal", "R": "sagittal", "P": "coronal", "A": "coronal", "S": "axial", "I": "axial"}
    expected = {plane_for_letter[letter]: 2 - k for k, letter in enumerate(code)}  # tensor axis = d - 1 - ITK axis
    planes = slice_planes(grid)
    assert [name for name, _ in planes] == ["axial", "coronal", "sagittal"]
    assert dict(planes) == expected


def test_planes_2d():
    assert slice_planes(ImageGrid((5, 6))) == [("2D", -1)]


def test_3d_figure(tmp_path):
    fixed, moving, warped, jac, field, grid = _case(3)
    path = str(tmp_path / "qc.png")
    assert qc_figure(fixed, moving, warped, jac, field, path, moving_transform=(np.eye(3), np.zeros(3)), dpi=40) == path
    with open(path, "rb") as f:
        assert f.read(8) == PNG
    import matplotlib.image

    h, w = matplotlib.image.imread(path).shape[:2]
    assert w / h < 2.5  # three rows
    assert os.listdir(tmp_path) == ["qc.png"]  # no temporary file left


def test_2d_figure_has_one_row(tmp_path):
    fixed, moving, warped, jac, field, grid = _case(2)
    field_image = sitk.GetImageFromArray(field, isVector=True)
    grid.apply_to_sitk(field_image)
    jac_image = grid.apply_to_sitk(sitk.GetImageFromArray(jac))
    path = str(tmp_path / "qc2d.png")
    qc_figure(fixed, moving, warped, jac_image, field_image, path, dpi=40)
    import matplotlib.image

    h, w = matplotlib.image.imread(path).shape[:2]
    assert w / h > 3.0  # one row of five panels


def test_accepts_files_and_itk_images(tmp_path):
    itk = pytest.importorskip("itk")
    fixed, moving, warped, jac, field, grid = _case(3)
    fixed_path, moving_path = str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz")
    sitk.WriteImage(fixed, fixed_path)
    sitk.WriteImage(moving, moving_path)
    warped_itk = itk.imread(fixed_path, itk.F)
    affine = sitk.AffineTransform(3)
    qc_figure(fixed_path, moving_path, warped_itk, jac, field, str(tmp_path / "qc.png"), moving_transform=affine,
              title="files", dpi=30)
    assert os.path.getsize(tmp_path / "qc.png") > 1000


def test_refuses_to_overwrite_an_input(tmp_path):
    fixed, moving, warped, jac, field, grid = _case(2)
    path = str(tmp_path / "fixed.png")
    sitk.WriteImage(sitk.Cast(sitk.RescaleIntensity(fixed), sitk.sitkUInt8), path)
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="refusing to overwrite input file"):
        qc_figure(path, moving, warped, jac, field, path)
    assert open(path, "rb").read() == before


def test_bad_arguments(tmp_path):
    fixed, moving, warped, jac, field, grid = _case(2)
    with pytest.raises(ValueError, match="output directory does not exist"):
        qc_figure(fixed, moving, warped, jac, field, str(tmp_path / "missing" / "qc.png"))
    with pytest.raises(ValueError, match="'jacobian_determinant' array must have the fixed grid's shape"):
        qc_figure(fixed, moving, warped, jac[:-1], field, str(tmp_path / "qc.png"))
    with pytest.raises(TypeError, match="'moving_transform' must be"):
        qc_figure(fixed, moving, warped, jac, field, str(tmp_path / "qc.png"), moving_transform="affine")
    other = sitk.GetImageFromArray(np.zeros((5, 5, 2)), isVector=True)
    with pytest.raises(ValueError, match="'displacement_field' must be on the fixed grid"):
        qc_figure(fixed, moving, warped, jac, other, str(tmp_path / "qc.png"))
    assert not os.path.exists(tmp_path / "qc.png")
