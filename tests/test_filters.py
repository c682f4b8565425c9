"""ITK and SimpleITK front ends (``itk_odereg.filters``) checked with the toolkits themselves.

The fixed image is anisotropic and oblique; the moving image lives on another
grid (size, spacing, origin and direction all differ). Expected values come
from ``sitk.Resample``, ``itk.ResampleImageFilter`` and the transforms' own
``TransformPoint``, never from the code under test. Registrations are tiny
(about 10^4 voxels) with cheap settings and shared through module fixtures.
"""
from __future__ import annotations

import sys

import itk
import numpy as np
import pytest
import SimpleITK as sitk

from itk_odereg.filters import ODERegistrationFilter, ODERegistrationMethod, ode_registration_filter
from itk_odereg.registration.affine import AffineSettings
from itk_odereg.registration.nodeo import NODEOSettings

CHEAP_AFFINE = AffineSettings(level_spacings_mm=(8.0,), rigid_iterations=(10,), affine_iterations=(5,), search_degrees=0)
CHEAP = dict(iterations=(10, 5), resolution_mm=None, affine_settings=CHEAP_AFFINE)


from synthetic_images import (  # noqa: E402
    CENTER,
    assert_same_image,
    inner_mask,
    one_thread,  # noqa: F401  (autouse)
    synthetic_image,
    write_oblique_pair,
)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    paths = write_oblique_pair(tmp_path_factory.mktemp("filters"))
    # The files hold float32 and the geometry to ~1e-7: use what was read back everywhere.
    return {"fixed": sitk.ReadImage(paths["fixed"]), "moving": sitk.ReadImage(paths["moving"]),
            "fixed_path": paths["fixed"], "moving_path": paths["moving"]}


@pytest.fixture(scope="module")
def method_run(pair):
    method = ODERegistrationMethod(**CHEAP)
    transform = method.Execute(pair["fixed"], pair["moving"])
    return method, transform


@pytest.fixture(scope="module")
def filter_run(pair):
    """reader (lazy) -> ODERegistrationFilter -> CastImageFilter; only the last stage is updated."""
    F3, D3 = itk.Image[itk.F, 3], itk.Image[itk.D, 3]
    reader = itk.ImageFileReader[F3].New(FileName=pair["fixed_path"])
    moving = itk.imread(pair["moving_path"], itk.F)
    reg = ODERegistrationFilter.New(reader, moving, Iterations=CHEAP["iterations"], ResolutionMM=None,
                                    AffineSettings=CHEAP_AFFINE)
    downstream = itk.CastImageFilter[F3, D3].New(reg)
    assert reg.GetOutput().GetBufferedRegion().GetNumberOfPixels() == 0  # nothing has run yet
    progress = []
    reg.AddObserver(itk.ProgressEvent(), lambda: progress.append(reg.GetProgress()))
    downstream.Update()
    return {"reg": reg, "reader": reader, "moving": moving, "downstream": downstream, "progress": progress}


# ---------------------------------------------------------------------------- SimpleITK method


def test_method_transform_in_sitk_resample_reproduces_warped(pair, method_run):
    method, transform = method_run
    assert isinstance(transform, sitk.Transform)
    expected = sitk.Resample(pair["moving"], pair["fixed"], transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped = method.GetWarpedImage()
    assert warped.GetSize() == pair["fixed"].GetSize()
    np.testing.assert_allclose(warped.GetSpacing(), pair["fixed"].GetSpacing())
    np.testing.assert_allclose(warped.GetDirection(), pair["fixed"].GetDirection())
    np.testing.assert_allclose(warped.GetOrigin(), pair["fixed"].GetOrigin())
    mask = inner_mask(pair["moving"], pair["fixed"], transform)
    assert_same_image(sitk.GetArrayFromImage(warped), sitk.GetArrayFromImage(expected), mask)


def _fixed_interior_points(image, step=3, margin=3):
    size = image.GetSize()
    ranges = [range(margin, s - margin, step) for s in size]
    return np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx))
                     for idx in np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, len(size))])


def test_method_forward_then_inverse_is_identity(pair, method_run):
    method, forward = method_run
    inverse = method.GetInverseTransform()
    points = _fixed_interior_points(pair["fixed"])
    mapped = np.array([forward.TransformPoint(tuple(p)) for p in points])
    back = np.array([inverse.TransformPoint(tuple(q)) for q in mapped])
    err = np.linalg.norm(back - points, axis=1)
    assert np.abs(mapped - points).max() > 1.0, "the test needs a non-trivial transform"
    assert err.mean() < 0.1 and err.max() < 0.3, (err.mean(), err.max())
    again = np.array([forward.TransformPoint(tuple(p)) for p in back])
    assert np.linalg.norm(again - mapped, axis=1).max() < 0.3


def test_method_displacement_field_is_the_whole_map(pair, method_run):
    method, forward = method_run
    field = method.GetDisplacementField()
    assert field.GetPixelID() == sitk.sitkVectorFloat64 and field.GetSize() == pair["fixed"].GetSize()
    arr = sitk.GetArrayFromImage(field)
    for idx in [(0, 0, 0), (5, 7, 3), (25, 21, 17), (12, 3, 9)]:
        p = np.array(pair["fixed"].TransformIndexToPhysicalPoint(idx))
        np.testing.assert_allclose(np.array(forward.TransformPoint(tuple(p))) - p, arr[idx[::-1]], atol=1e-6)
    jac = method.GetJacobianDeterminant()
    assert jac.GetSize() == pair["fixed"].GetSize()
    assert 0.2 < float(sitk.GetArrayViewFromImage(jac).min()) <= 1.0 <= float(sitk.GetArrayViewFromImage(jac).max())
    result = method.GetResult()
    assert result.folding_percent == 0.0
    assert set(result.timings) >= {"affine", "nodeo", "total"}


def test_method_str_repr_and_name():
    method = ODERegistrationMethod(metric="mi", NumberOfIterations=(5,))
    text = str(method)
    for word in ("Metric: 'mi'", "Iterations: (5,)", "Affine: 'affine'", "Device: 'cpu'", "ResolutionMM: 'auto'",
                 "Executed: False"):
        assert word in text
    assert repr(method).startswith("ODERegistrationMethod(method='nodeo', model='bspline', metric='mi'")
    assert method.GetName() == "ODERegistrationMethod"


def test_method_getters_before_execute_raise():
    method = ODERegistrationMethod()
    for getter in ("GetTransform", "GetInverseTransform", "GetDisplacementField", "GetResult", "GetJacobianDeterminant"):
        with pytest.raises(RuntimeError, match=rf"ODERegistrationMethod.{getter}\(\): call Execute"):
            getattr(method, getter)()


def test_method_rejects_itk_images(pair):
    with pytest.raises(TypeError, match=r"ODERegistrationMethod.Execute\(\): 'fixed' .*use ODERegistrationFilter"):
        ODERegistrationMethod().Execute(itk.image_from_array(np.ones((4, 4, 4), np.float32)), pair["moving"])


def test_method_bad_image_names_argument(pair):
    vector = sitk.Compose(pair["moving"], pair["moving"], pair["moving"])
    with pytest.raises(ValueError, match=r"'moving' has 3 components per voxel"):
        ODERegistrationMethod(**CHEAP).Execute(pair["fixed"], vector)


# ---------------------------------------------------------------------------- Set/Get round trips

ROUND_TRIPS = [
    ("Metric", "mi"),
    ("Metric", "ngf"),
    ("Affine", "rigid"),
    ("Affine", None),
    ("Device", "cuda"),
    ("Iterations", (30, 20, 10)),
    ("NumberOfIterations", (7,)),
    ("Steps", 4),
    ("Seed", 123),
    ("Seed", None),
    ("ResolutionMM", 3.0),
    ("ResolutionMM", None),
    ("Progress", True),
    ("ProgressBar", True),
    ("NODEOSettings", NODEOSettings(steps=3)),
    ("AffineSettings", CHEAP_AFFINE),
]


@pytest.mark.parametrize("make", [ODERegistrationMethod, ODERegistrationFilter.New], ids=["method", "filter"])
@pytest.mark.parametrize("name,value", ROUND_TRIPS, ids=[f"{n}={v!r}"[:30] for n, v in ROUND_TRIPS])
def test_set_get_round_trip(make, name, value):
    obj = make()
    if isinstance(obj, ODERegistrationFilter) and name == "Progress":
        name = "ProgressBar"  # the filter's GetProgress() is ITK's fraction done
    if isinstance(obj, ODERegistrationMethod) and name == "ProgressBar":
        name = "Progress"
    getattr(obj, f"Set{name}")(value)
    assert getattr(obj, f"Get{name}")() == value


@pytest.mark.parametrize("make", [ODERegistrationMethod, ODERegistrationFilter.New], ids=["method", "filter"])
def test_defaults_on_off_and_aliases(make):
    obj = make()
    get_bar = obj.GetProgressBar if isinstance(obj, ODERegistrationFilter) else obj.GetProgress
    assert (obj.GetMetric(), obj.GetAffine(), obj.GetDevice(), obj.GetIterations(), obj.GetSteps(), obj.GetSeed(),
            obj.GetResolutionMM(), get_bar()) == ("lncc", "affine", "cpu", None, 4, 0, "auto", False)
    obj.ProgressOn()
    assert get_bar() is True
    obj.ProgressOff()
    assert get_bar() is False
    obj.SetAffine("none")
    assert obj.GetAffine() is None
    obj.SetIterations([4, 2])
    assert obj.GetNumberOfIterations() == (4, 2)


@pytest.mark.parametrize(
    "setter,value,error,message",
    [
        ("SetMetric", "cc", ValueError,
         r"SetMetric\(\): invalid metric \"cc\". Must be one of \['lncc', 'mse', 'mi', 'ngf'\]"),
        ("SetAffine", "syn", ValueError, r"SetAffine\(\): invalid affine"),
        ("SetDevice", "tpu", ValueError, r"SetDevice\(\): 'device' must be"),
        ("SetIterations", (10, -1), ValueError, r"SetIterations\(\): 'iterations' must be"),
        ("SetIterations", "many", TypeError, r"SetIterations\(\): 'iterations' must be a sequence"),
        ("SetSteps", 0, ValueError, r"SetSteps\(\): 'steps' must be a positive integer"),
        ("SetSeed", 1.5, TypeError, r"SetSeed\(\): 'seed' must be an integer"),
        ("SetResolutionMM", -2, ValueError, r"SetResolutionMM\(\): 'resolution_mm' must be positive"),
        ("SetNODEOSettings", {"steps": 3}, TypeError, r"'nodeo' must be a NODEOSettings"),
    ],
)
def test_bad_parameters_name_the_call_site(setter, value, error, message):
    for obj in (ODERegistrationMethod(), ODERegistrationFilter.New()):
        cls = type(obj).__name__
        with pytest.raises(error, match=message) as info:
            getattr(obj, setter)(value)
        assert str(info.value).startswith(f"{cls}.{setter}()")


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError, match=r"ODERegistrationMethod\(\): unknown parameter 'radius'"):
        ODERegistrationMethod(radius=2)
    with pytest.raises(TypeError, match=r"ODERegistrationFilter.New\(\): unknown parameter 'Radius'"):
        ODERegistrationFilter.New(Radius=2)


def test_filter_setters_mark_it_modified_only_on_change():
    reg = ODERegistrationFilter.New()
    t0 = reg.GetMTime()
    reg.SetSteps(4)  # the default: no change
    assert reg.GetMTime() == t0
    reg.SetSteps(6)
    assert reg.GetMTime() > t0


# ---------------------------------------------------------------------------- ITK filter


def test_filter_is_updated_by_a_downstream_filter(pair, filter_run):
    reg, downstream = filter_run["reg"], filter_run["downstream"]
    out = downstream.GetOutput()
    assert isinstance(out, itk.Image[itk.D, 3])
    arr = itk.array_from_image(out)
    assert arr.shape == sitk.GetArrayViewFromImage(pair["fixed"]).shape and arr.max() > 10.0
    warped = reg.GetOutput()
    assert isinstance(warped, itk.Image[itk.F, 3])
    np.testing.assert_allclose(arr, itk.array_from_image(warped), rtol=1e-6)
    # metadata of the fixed image (read by the upstream reader) is kept
    fixed = pair["fixed"]
    np.testing.assert_allclose(np.array(warped.GetSpacing()), fixed.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(np.array(warped.GetOrigin()), fixed.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(itk.array_from_matrix(warped.GetDirection()).ravel(), fixed.GetDirection(), atol=1e-6)
    # the reader upstream was updated by the same request
    assert filter_run["reader"].GetOutput().GetBufferedRegion().GetNumberOfPixels() == arr.size


def test_filter_sends_itk_progress_events(filter_run):
    progress = filter_run["progress"]
    assert len(progress) >= 10
    assert all(isinstance(p, float) for p in progress)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)


def test_filter_update_is_cached(filter_run):
    reg = filter_run["reg"]
    result = reg.GetResult()
    reg.Update()
    filter_run["downstream"].Update()
    assert reg.GetResult() is result


def test_filter_transform_in_itk_resample_reproduces_output(pair, filter_run):
    reg, moving = filter_run["reg"], filter_run["moving"]
    transform = reg.GetTransform()
    assert isinstance(transform, itk.CompositeTransform[itk.D, 3])
    assert transform.GetNumberOfTransforms() == 2
    F3 = itk.Image[itk.F, 3]
    resample = itk.ResampleImageFilter[F3, F3].New()
    resample.SetInput(moving)
    resample.SetTransform(transform)
    resample.SetInterpolator(itk.LinearInterpolateImageFunction[F3, itk.D].New())
    resample.SetReferenceImage(reg.GetOutput())
    resample.UseReferenceImageOn()
    resample.SetDefaultPixelValue(0.0)
    resample.Update()
    expected = itk.array_from_image(resample.GetOutput())
    # functional form too
    functional = itk.resample_image_filter(moving, transform=transform, use_reference_image=True,
                                           reference_image=reg.GetOutput())
    np.testing.assert_allclose(itk.array_from_image(functional), expected, rtol=1e-6, atol=1e-6)
    sitk_tx = sitk.ReadTransform(_write_itk_transform(transform, pair["fixed_path"]))
    mask = inner_mask(pair["moving"], pair["fixed"], sitk_tx)
    assert_same_image(itk.array_from_image(reg.GetOutput()), expected, mask)


def _write_itk_transform(transform, near_path):
    path = near_path.replace("fixed.nii.gz", "filter_composite.h5")
    itk.transformwrite([transform], path)
    return path


def test_filter_inverse_transform_maps_points_back(pair, filter_run):
    reg = filter_run["reg"]
    forward, inverse = reg.GetTransform(), reg.GetInverseTransform()
    assert isinstance(inverse, itk.CompositeTransform[itk.D, 3])
    points = _fixed_interior_points(pair["fixed"], step=4)
    err = [np.linalg.norm(np.array(inverse.TransformPoint(forward.TransformPoint([float(v) for v in p]))) - p)
           for p in points]
    assert np.mean(err) < 0.1 and np.max(err) < 0.3


def test_filter_fields_and_jacobian(pair, filter_run):
    reg = filter_run["reg"]
    field = reg.GetDisplacementField()
    assert isinstance(field, itk.Image[itk.Vector[itk.D, 3], 3])
    jac = reg.GetJacobianDeterminant()
    assert itk.array_from_image(jac).shape == sitk.GetArrayViewFromImage(pair["fixed"]).shape
    inv_field = reg.GetInverseDisplacementField()
    assert itk.array_from_image(inv_field).shape[-1] == 3
    arr = itk.array_from_image(field)
    forward = reg.GetTransform()
    for idx in [(0, 0, 0), (5, 7, 3), (12, 3, 9)]:
        p = np.array(pair["fixed"].TransformIndexToPhysicalPoint(idx))
        q = np.array(forward.TransformPoint([float(v) for v in p]))
        np.testing.assert_allclose(q - p, arr[idx[::-1]], atol=1e-4)


def test_filter_and_method_agree(method_run, filter_run):
    """Same data, same seed: the ITK and SimpleITK front ends run the same registration."""
    method, _ = method_run
    a = sitk.GetArrayFromImage(method.GetWarpedImage())
    b = itk.array_from_image(filter_run["reg"].GetOutput())
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3 * float(np.abs(a).max()))
    np.testing.assert_allclose(filter_run["reg"].GetResult().affine_matrix, method.GetResult().affine_matrix, atol=1e-4)


def test_filter_str_lists_settings(filter_run):
    text = str(filter_run["reg"])
    assert "ODERegistrationFilter (itk.PyImageFilter, 3D, float)" in text
    assert "Iterations: (10, 5)" in text and "ResolutionMM: None" in text and "Updated: True" in text
    assert "Metric='lncc'" in repr(filter_run["reg"])


def test_filter_forwards_itk_methods(filter_run):
    reg = filter_run["reg"]
    assert "PyImageFilter" in reg.GetNameOfClass()
    assert reg.GetITKFilter().GetNumberOfIndexedInputs() == 2
    assert isinstance(reg.GetMovingImage(), itk.Image[itk.F, 3])


def test_filter_reraises_the_engine_error(pair, capsys):
    constant = itk.image_from_array(np.full((6, 7, 8), 3.0, np.float32))
    reg = ODERegistrationFilter.New(itk.imread(pair["fixed_path"], itk.F), constant, **CHEAP)
    with pytest.raises(ValueError, match=r"'moving' is constant"):
        reg.Update()
    assert capsys.readouterr().err == ""  # the original exception, no traceback printed by ITK
    median = itk.MedianImageFilter.New(reg)
    with pytest.raises(RuntimeError, match="CommandCallable"):
        median.Update()
    # from downstream, ITK only says "error executing the CommandCallable": the cause is on one line
    err = capsys.readouterr().err
    # the error names the call the user made, not the engine's register() beneath it
    assert "ODERegistrationFilter: ValueError: ODERegistrationFilter.Update(): 'moving' is constant" in err
    assert "Traceback" not in err
    assert sys.excepthook is sys.__excepthook__ or not type(sys.excepthook).__name__.startswith("_OneShot")


def test_filter_rejects_bad_inputs():
    with pytest.raises(TypeError, match=r"SetFixedImage\(\): 'fixed' must be an itk.Image .*use ODERegistrationMethod"):
        ODERegistrationFilter.New().SetFixedImage(sitk.Image(4, 4, 4, sitk.sitkFloat32))
    vector = itk.image_from_array(np.zeros((4, 4, 4, 3), np.float32), is_vector=True)
    with pytest.raises(ValueError, match=r"SetMovingImage\(\): 'moving' has 3 components per voxel"):
        ODERegistrationFilter.New().SetMovingImage(vector)
    with pytest.raises(ValueError, match=r"'moving' is 2D but this filter was created for 3D images"):
        ODERegistrationFilter.New().SetMovingImage(itk.image_from_array(np.zeros((4, 4), np.float32)))
    with pytest.raises(TypeError, match=r"create it with ODERegistrationFilter.New"):
        ODERegistrationFilter()


def test_functional_twin_2d_integer_pixels():
    """2D, int16 fixed and uint8 moving on different grids: inputs are cast inside the pipeline."""
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    fixed_s = synthetic_image((40, 34), (1.5, 2.0), rot, CENTER[:2], dtype=np.int16)
    moving_s = synthetic_image((36, 38), (1.8, 1.7), np.eye(2), CENTER[:2] + 1.0, shift=(2.0, -1.5), dtype=np.uint8)
    fixed, moving = _sitk_to_itk(fixed_s), _sitk_to_itk(moving_s)
    assert isinstance(fixed, itk.Image[itk.SS, 2]) and isinstance(moving, itk.Image[itk.UC, 2])
    warped, transform = ode_registration_filter(fixed, moving, iterations=(10, 5), resolution_mm=None,
                                                affine_settings=CHEAP_AFFINE)
    assert isinstance(warped, itk.Image[itk.F, 2])
    assert isinstance(transform, itk.CompositeTransform[itk.D, 2])
    moving_f = itk.cast_image_filter(moving, ttype=(itk.Image[itk.UC, 2], itk.Image[itk.F, 2]))
    expected = itk.resample_image_filter(moving_f, transform=transform, use_reference_image=True, reference_image=warped)
    arr, exp = itk.array_from_image(warped), itk.array_from_image(expected)
    tol = 1e-4 * float(np.abs(exp).max()) + 1e-5
    assert (np.abs(arr - exp) > tol).mean() < 0.01
    assert np.median(np.abs(arr - exp)) < tol


def _sitk_to_itk(image):
    arr = sitk.GetArrayFromImage(image)
    out = itk.image_from_array(arr)
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    d = image.GetDimension()
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection(), np.float64).reshape(d, d).copy()))
    return out
