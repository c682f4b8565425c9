"""The engine's toolkit-neutral answer, its stages, its options and its progress output.

The checks of :class:`Registration` go against SimpleITK resampling through the transforms
the SimpleITK adapter builds from the same value, not against our own sampling.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import SimpleITK as sitk

from itk_odereg.adapters import sitk as sitk_adapter
from itk_odereg.core.image import load_image
from itk_odereg.registration.affine import AffineSettings
from itk_odereg.registration.engine import register_images
from itk_odereg.registration.options import OPTIONS, RegistrationOptions
from itk_odereg.registration.progress import ProgressReporter
from itk_odereg.registration.result import Registration
from itk_odereg.registration.stages import AFFINE_MODES, DEFORMABLE_STAGES, STAGES
from synthetic_images import assert_same_image, inner_mask, oblique_pair, one_thread  # noqa: F401

CHEAP_AFFINE = AffineSettings(level_spacings_mm=(8.0,), rigid_iterations=(10,), affine_iterations=(5,), search_degrees=0)


@pytest.fixture(scope="module")
def registered():
    fixed, moving = oblique_pair()
    fixed_in, moving_in = load_image(fixed, "fixed"), load_image(moving, "moving")
    options = RegistrationOptions.create(iterations=(10, 5), resolution_mm=None, affine_settings=CHEAP_AFFINE)
    return fixed, moving, fixed_in, moving_in, register_images(fixed_in, moving_in, options)


def test_registration_is_frozen_and_toolkit_neutral(registered):
    *_, reg = registered
    assert isinstance(reg, Registration)
    with pytest.raises(AttributeError):
        reg.affine_matrix = np.eye(3)
    with pytest.raises(ValueError):
        reg.affine_matrix[0, 0] = 2.0   # read-only array
    assert reg.displacement.shape == (1, 3, *reg.fixed_grid.shape)
    assert reg.displacement_mm.shape == (*reg.fixed_grid.shape, 3)
    modules = {type(v).__module__.split(".")[0] for v in vars(reg).values()}
    assert not modules & {"SimpleITK", "itk"}, modules
    assert set(reg.timings) >= {"affine", "nodeo", "outputs"}
    assert {r["stage"] for r in reg.loss_history} >= {"rigid", "affine", "nodeo"}


def test_warp_matches_sitk_resample_through_the_forward_transform(registered):
    fixed, moving, _, moving_in, reg = registered
    transform = sitk_adapter.forward_transform(reg)
    expected = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    warped = reg.warp(moving_in.tensor, moving_in.grid)[0, 0].numpy()
    assert_same_image(warped, expected, inner_mask(moving, fixed, transform))


def test_inverse_warp_matches_sitk_resample_through_the_inverse_transform(registered):
    fixed, moving, fixed_in, _, reg = registered
    inverse = sitk_adapter.inverse_transform(reg)
    expected = sitk.GetArrayFromImage(sitk.Resample(fixed, moving, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    back = reg.inverse_warp(fixed_in.tensor, fixed_in.grid)
    assert back.shape[2:] == reg.moving_grid.shape
    assert_same_image(back[0, 0].numpy(), expected, inner_mask(fixed, moving, inverse))


def test_warp_in_chunks_is_the_warp_of_the_whole_grid(registered, monkeypatch):
    """The warps go over the voxels in chunks (their float64 point arrays bound the output
    stage's memory); where the chunks end changes no value, and a precomputed ``field_mm``
    gives the same image."""
    *_, moving_in, reg = registered
    whole = reg.warp(moving_in.tensor, moving_in.grid)
    monkeypatch.setattr(Registration, "CHUNK_POINTS", 997)   # prime: chunks end inside rows and slices
    assert reg.fixed_grid.numel > 3 * 997
    assert np.array_equal(reg.warp(moving_in.tensor, moving_in.grid).numpy(), whole.numpy())
    assert np.array_equal(reg.warp(moving_in.tensor, moving_in.grid, field_mm=reg.field_mm()).numpy(), whole.numpy())


def test_inverse_warp_in_chunks_is_the_inverse_warp_of_the_whole_grid(registered, monkeypatch):
    fixed, _, fixed_in, _, reg = registered
    monkeypatch.setattr(Registration, "CHUNK_POINTS", reg.moving_grid.numel)   # one chunk
    whole = reg.inverse_warp(fixed_in.tensor, fixed_in.grid)
    monkeypatch.setattr(Registration, "CHUNK_POINTS", 997)
    assert np.array_equal(reg.inverse_warp(fixed_in.tensor, fixed_in.grid).numpy(), whole.numpy())


def test_field_mm_is_the_whole_map(registered):
    *_, reg = registered
    transform = sitk_adapter.forward_transform(reg)
    points = reg.fixed_grid.world_points().reshape(-1, 3)
    pick = points[:: max(1, len(points) // 50)]
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in pick])
    total = reg.field_mm().reshape(-1, 3)[:: max(1, len(points) // 50)]
    np.testing.assert_allclose(pick + total, mapped, atol=1e-6)


def test_the_none_stage_gives_the_affine_alone(registered):
    fixed, moving, fixed_in, moving_in, _ = registered
    options = RegistrationOptions.create(method="none", affine_settings=CHEAP_AFFINE, resolution_mm=None)
    reg = register_images(fixed_in, moving_in, options)
    assert float(reg.displacement.abs().max()) == 0.0 and float(reg.inverse_displacement.abs().max()) == 0.0
    assert "nodeo" not in reg.timings and reg.folding_percent == 0.0
    affine = sitk_adapter.forward_transform(reg)
    p = reg.fixed_grid.center
    np.testing.assert_allclose(affine.TransformPoint(p.tolist()), reg.affine_matrix @ p + reg.affine_translation,
                               atol=1e-9)


def test_stage_registry_and_affine_modes():
    assert DEFORMABLE_STAGES == ("nodeo", "msodenet", "msodenet+nodeo", "none")
    assert AFFINE_MODES == ("affine", "rigid", None)
    assert {s.kind for s in STAGES.values()} == {"linear", "deformable"}
    assert all(s.description for s in STAGES.values())


def test_options_are_checked_once_with_the_callers_name():
    with pytest.raises(ValueError, match=r'my_caller\(\): invalid method "syn". Must be one of \[.*\'none\'\]'):
        RegistrationOptions.create("my_caller()", method="syn")
    with pytest.raises(ValueError, match=r"my_caller\(\): 'device' must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        RegistrationOptions.create("my_caller()", device="gpu")
    with pytest.raises(TypeError, match=r"my_caller\(\): unknown option 'radius'"):
        RegistrationOptions.create("my_caller()", radius=3)
    with pytest.raises(ValueError, match=r"'iterations' must list 1 to 3"):
        RegistrationOptions.create(iterations=(1, 2, 3, 4))
    options = RegistrationOptions.create(affine="none", iterations=5, resolution_mm=2)
    assert options.affine is None and options.iterations == (5,) and options.resolution_mm == 2.0
    assert options.nodeo_settings().levels == (1.0,) and options.nodeo_settings().iterations == (5,)
    assert [o.key for o in OPTIONS] == [f for f in RegistrationOptions.__dataclass_fields__]


def test_register_refuses_an_unknown_device_name_clearly():
    from itk_odereg.registration.driver import register

    fixed, moving = oblique_pair()
    with pytest.raises(ValueError, match=r"register\(\): 'device' must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        register(fixed, moving, device="gpu")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _records(levels=2, iterations=5, converge_at=None):
    for level in range(levels):
        for i in range(iterations):
            converged = converge_at is not None and i == converge_at
            yield {"level": level, "iteration": i, "iterations": iterations, "loss": 1.0 / (i + 1),
                   "converged": converged}
            if converged:
                break


def test_progress_in_a_log_file_is_one_line_per_level():
    stream = io.StringIO()
    reporter = ProgressReporter(stream=stream)
    for record in _records(converge_at=2):
        reporter.report("nodeo", record)
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 2 and lines[0].startswith("  nodeo level 1: 3/5 iterations (converged), loss 0.3333")


def test_progress_on_a_terminal_uses_tqdm_bars():
    stream = _Terminal()
    reporter = ProgressReporter(stream=stream)
    for record in _records():
        reporter.report("nodeo", record)
    reporter.close()
    text = stream.getvalue()
    assert "nodeo level 1" in text and "nodeo level 2" in text and "5/5" in text and "loss 0.2000" in text


def test_progress_callback_gets_every_record_with_its_stage():
    seen = []
    reporter = ProgressReporter.create(seen.append)
    for record in _records(levels=1, iterations=3):
        reporter.stage("nodeo")(record)
    assert [r["iteration"] for r in seen] == [0, 1, 2] and {r["stage"] for r in seen} == {"nodeo"}
    assert ProgressReporter.create(False) is None
