"""End-to-end checks of register(): physical-space correctness against SimpleITK and ITK,
recovery of known deformations and rotations, the inverse, and bad input.

Images are small and synthetic, and the settings cheap, so the file runs in about a minute.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from itk_odereg import ops
from itk_odereg.core.separable import gaussian_smooth
from itk_odereg.registration.affine import AffineSettings
from itk_odereg.registration.driver import register
from itk_odereg.registration.nodeo import NODEOSettings

FAST_AFFINE = AffineSettings(level_spacings_mm=(6.0, 3.0), rigid_iterations=(60, 30), affine_iterations=(20, 10))


def smooth_noise(shape, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, *shape, generator=g)
    x = gaussian_smooth(x, [sigma] * len(shape))
    x = (x - x.min()) / (x.max() - x.min())
    return x


def phantom(shape, seed=0):
    """Smooth random texture inside an ellipsoid: content everywhere inside, a clear outline."""
    axes = [torch.linspace(-1, 1, s) for s in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(sum((g / a) ** 2 for g, a in zip(grids, (0.8, 0.75, 0.7)[: len(shape)])))
    inside = (r < 1).float()[None, None]
    return (0.3 + smooth_noise(shape, 1.5, seed)) * gaussian_smooth(inside, [1.0] * len(shape))


def to_sitk(tensor, spacing, origin=None, direction=None):
    img = sitk.GetImageFromArray(tensor[0, 0].numpy().astype(np.float32))
    img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def rotation_direction(angle_deg, axis=(0.3, 0.2, 0.93)):
    return sitk.VersorTransform(tuple(np.array(axis) / np.linalg.norm(axis)), math.radians(angle_deg)).GetMatrix()


@pytest.fixture(scope="module")
def oblique_pair():
    """Fixed: anisotropic, oblique, non-zero origin. Moving: another grid (size, spacing, direction),
    holding the fixed content rotated by 10 degrees and smoothly deformed."""
    fixed_t = phantom((28, 32, 30), seed=1)
    fixed = to_sitk(fixed_t, (2.2, 1.8, 2.6), origin=(-31.0, 12.5, 40.0), direction=rotation_direction(20))
    reference = sitk.Image([30, 26, 24], sitk.sitkFloat32)
    reference.SetSpacing((2.0, 2.4, 2.5))
    reference.SetOrigin((-35.0, 8.0, 32.0))
    reference.SetDirection(rotation_direction(-15, axis=(0.9, 0.1, 0.2)))
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    rigid = sitk.Euler3DTransform(center, math.radians(10), math.radians(-5), 0, (3.0, -2.0, 1.5))
    bspline = sitk.BSplineTransformInitializer(fixed, [3, 3, 3])
    bspline.SetParameters(np.random.default_rng(0).normal(0, 1.5, len(bspline.GetParameters())))
    moving = sitk.Resample(fixed, reference, sitk.CompositeTransform([rigid, bspline]), sitk.sitkLinear, 0.0)
    # The phantom is ~60 mm across. With the 4 mm default smoothing NODEO's field
    # there stretches by up to 3x within a few voxels, and linear interpolation
    # of so curved an inverse field alone costs up to ~0.35 voxel between grid
    # points (measured); 10 mm keeps the field smooth on the phantom's scale, so
    # the inverse test below measures the inverse, not the interpolation.
    settings = NODEOSettings(levels=(2.0, 1.0), iterations=(30, 15), control_spacing_mm=8.0, smoothing_mm=10.0)
    result = register(fixed, moving, resolution_mm=None, nodeo=settings, affine_settings=FAST_AFFINE)
    return fixed, moving, result


def interior_mask(image, margin=3):
    arr = np.zeros(sitk.GetArrayFromImage(image).shape, bool)
    arr[margin:-margin, margin:-margin, margin:-margin] = True
    return arr


def test_warped_equals_sitk_resample_with_returned_transform(oblique_pair):
    fixed, moving, result = oblique_pair
    resampled = sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0)
    ours = sitk.GetArrayFromImage(result.warped)
    theirs = sitk.GetArrayFromImage(resampled)
    assert result.warped.GetSize() == fixed.GetSize()
    assert np.allclose(result.warped.GetDirection(), fixed.GetDirection())
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_warped_equals_itk_resample_with_itk_transform(oblique_pair):
    itk = pytest.importorskip("itk")
    fixed, moving, _ = oblique_pair
    fixed_itk = itk.image_from_array(sitk.GetArrayFromImage(fixed))
    fixed_itk.SetSpacing(fixed.GetSpacing())
    fixed_itk.SetOrigin(fixed.GetOrigin())
    fixed_itk.SetDirection(itk.matrix_from_array(np.array(fixed.GetDirection()).reshape(3, 3).copy()))
    moving_itk = itk.image_from_array(sitk.GetArrayFromImage(moving))
    moving_itk.SetSpacing(moving.GetSpacing())
    moving_itk.SetOrigin(moving.GetOrigin())
    moving_itk.SetDirection(itk.matrix_from_array(np.array(moving.GetDirection()).reshape(3, 3).copy()))
    settings = NODEOSettings(levels=(1.0,), iterations=(5,))
    result = register(fixed_itk, moving_itk, resolution_mm=None, nodeo=settings,
                      affine_settings=AffineSettings(level_spacings_mm=(6.0,), rigid_iterations=(20,),
                                                     affine_iterations=(5,), search_degrees=0))
    assert isinstance(result.warped, type(fixed_itk))
    image_type = type(fixed_itk)
    resampler = itk.ResampleImageFilter[image_type, image_type].New()
    resampler.SetInput(moving_itk)
    resampler.SetTransform(result.transform)
    resampler.SetReferenceImage(fixed_itk)
    resampler.UseReferenceImageOn()
    resampler.SetDefaultPixelValue(0)
    resampler.Update()
    theirs = itk.array_from_image(resampler.GetOutput())
    ours = itk.array_from_image(result.warped)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_registration_improves_alignment_without_folding(oblique_pair):
    fixed, moving, result = oblique_pair
    f = sitk.GetArrayFromImage(fixed)
    mask = interior_mask(fixed) & (f > 0.2)
    before = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, 0.0))
    after = sitk.GetArrayFromImage(result.warped)
    err_before = np.sqrt(((before - f)[mask] ** 2).mean())
    err_after = np.sqrt(((after - f)[mask] ** 2).mean())
    assert err_after < 0.5 * err_before
    assert result.folding_percent == 0.0


def test_inverse_transform_inverts_forward(oblique_pair):
    fixed, _, result = oblique_pair
    rng = np.random.default_rng(3)
    size = np.array(fixed.GetSize())
    errors = []
    for _ in range(300):
        index = rng.uniform(0.25, 0.75) * (size - 1) * rng.uniform(0.6, 1.0, 3)
        p = np.array(fixed.TransformContinuousIndexToPhysicalPoint(index.tolist()))
        q = result.transform.TransformPoint(p.tolist())
        back = np.array(result.inverse_transform.TransformPoint(q))
        errors.append(np.linalg.norm(back - p) / min(fixed.GetSpacing()))
    assert max(errors) < 0.1, max(errors)


def test_known_smooth_deformation_is_recovered():
    shape = (32, 32, 32)
    base = phantom(shape, seed=4)
    control = torch.randn(1, 3, *ops.bspline_control_shape(shape, (8, 8, 8)), generator=torch.Generator().manual_seed(5))
    u_true = ops.bspline_to_dense(1.2 * control, shape, (8, 8, 8))
    assert ops.jacobian_determinant(u_true).min() > 0.3
    fixed = to_sitk(ops.warp(base, u_true), (1.0, 1.0, 1.0))
    moving = to_sitk(base, (1.0, 1.0, 1.0))
    settings = NODEOSettings(levels=(2.0, 1.0), iterations=(60, 40), control_spacing_mm=6.0, smoothing_mm=3.0)
    result = register(fixed, moving, affine=None, resolution_mm=None, nodeo=settings)
    # The deformable field in mm on a 1 mm identity-direction grid is u_true in (x, y, z) order.
    recovered = result.deformable_field_mm[..., ::-1]          # (z, y, x, 3) -> components (z, y, x)
    truth = u_true[0].permute(1, 2, 3, 0).numpy()
    inside = (base[0, 0].numpy() > 0.35)
    inside[:4], inside[-4:], inside[:, :4], inside[:, -4:], inside[:, :, :4], inside[:, :, -4:] = [False] * 6
    rmse = np.sqrt(((recovered - truth) ** 2).sum(-1)[inside].mean())
    start = np.sqrt((truth**2).sum(-1)[inside].mean())
    assert rmse < 0.5, (rmse, start)
    assert result.folding_percent == 0.0


def test_nodeo_refines_through_an_initial_map_resampling_moving_once():
    """msodenet+nodeo: NODEO sees the moving image through the earlier stage's map u0 (one
    resampling of the original): where u0 is already right, the composed map stays at u0."""
    from itk_odereg.losses import make_metric
    from itk_odereg.registration.nodeo import nodeo_register

    shape = (24, 24, 24)
    base = phantom(shape, seed=6)
    control = torch.randn(1, 3, *ops.bspline_control_shape(shape, (6, 6, 6)), generator=torch.Generator().manual_seed(7))
    u0 = ops.bspline_to_dense(1.5 * control, shape, (6, 6, 6))
    fixed = ops.warp(base, u0)
    settings = NODEOSettings(levels=(1.0,), iterations=(15,), control_spacing_mm=6.0, smoothing_mm=3.0)
    result = nodeo_register(fixed, base, (1.0, 1.0, 1.0), settings, initial_displacement=u0)
    # The flow starts at the identity, so its first loss is that of moving o u0 itself.
    first = float(make_metric("lncc")(fixed, ops.warp(base, u0)))
    assert result.loss_history[0]["similarity"] == pytest.approx(first, abs=1e-5)
    composed = result.displacement + ops.warp(u0, result.displacement, "border")
    plain = nodeo_register(fixed, base, (1.0, 1.0, 1.0), settings)
    inside = base > 0.35
    rms = lambda u: float(((u - u0).square().sum(1, keepdim=True)[inside]).mean().sqrt())  # noqa: E731
    # Inside the phantom, the composed map is u0 to about a tenth of a voxel (measured 0.11);
    # NODEO alone, with the same iterations, gets to about 0.3 of the 0.9 voxel RMS.
    assert rms(composed) < 0.2
    assert rms(composed) < 0.5 * rms(plain.displacement)
    assert plain.loss_history[0]["similarity"] > result.loss_history[0]["similarity"]
    with pytest.raises(ValueError, match="initial_displacement"):
        nodeo_register(fixed, base, (1.0, 1.0, 1.0), settings, initial_displacement=u0[:, :2])


def test_affine_stage_recovers_a_25_degree_rotation():
    fixed_t = phantom((36, 36, 36), seed=6)
    fixed = to_sitk(fixed_t, (2.0, 2.0, 2.0), origin=(-35.0, -35.0, -35.0))
    center = fixed.TransformContinuousIndexToPhysicalPoint([17.5] * 3)
    truth = sitk.Euler3DTransform(center, math.radians(25), 0.0, 0.0, (4.0, -3.0, 2.0))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    settings = NODEOSettings(levels=(1.0,), iterations=(1,))
    result = register(fixed, moving, affine="rigid", resolution_mm=None, nodeo=settings,
                      affine_settings=AffineSettings(level_spacings_mm=(6.0, 3.0), rigid_iterations=(80, 40)))
    # T maps fixed points to moving points: moving = fixed o truth^-1, so T = truth.
    A_true = np.array(truth.GetMatrix()).reshape(3, 3)
    angle_error = math.degrees(math.acos(np.clip((np.trace(result.affine_matrix.T @ A_true) - 1) / 2, -1, 1)))
    assert angle_error < 1.5, angle_error
    for index in ([5, 5, 5], [30, 10, 20], [17, 17, 17]):
        p = np.array(fixed.TransformIndexToPhysicalPoint(index))
        ours = result.affine_matrix @ p + result.affine_translation
        assert np.linalg.norm(ours - np.array(truth.TransformPoint(p.tolist()))) < 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda f: sitk.Image([4, 4, 4, 4], sitk.sitkFloat32), "4D|dimension"),
        (lambda f: sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), "vector|component"),
        (lambda f: sitk.Image([8, 8, 8], sitk.sitkFloat32), "constant|empty"),
        (lambda f: "/nonexistent/image.nii.gz", "nonexistent|not exist|No such"),
    ],
)
def test_bad_moving_image_is_named(make, match):
    fixed = to_sitk(phantom((12, 12, 12)), (1.0, 1.0, 1.0))
    with pytest.raises((ValueError, TypeError, FileNotFoundError, OSError), match=match) as info:
        register(fixed, make(fixed), affine=None)
    assert "moving" in str(info.value)


def test_nan_image_and_dimension_mismatch_and_options():
    fixed = to_sitk(phantom((12, 12, 12)), (1.0, 1.0, 1.0))
    nan = sitk.GetArrayFromImage(fixed)
    nan[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="fixed.*NaN|NaN.*fixed"):
        register(to_sitk(torch.from_numpy(nan)[None, None], (1.0, 1.0, 1.0)), fixed)
    flat = to_sitk(phantom((12, 12)), (1.0, 1.0))
    with pytest.raises(ValueError, match="same dimension"):
        register(fixed, flat)
    with pytest.raises(ValueError, match='invalid metric "ncc"'):
        register(fixed, fixed, metric="ncc")
    with pytest.raises(ValueError, match='invalid affine'):
        register(fixed, fixed, affine="syn")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            register(fixed, fixed, device="cuda")


def test_registration_2d_matches_sitk_resample():
    fixed = to_sitk(phantom((40, 36), seed=8), (1.5, 1.2), origin=(10.0, -5.0),
                    direction=(math.cos(0.3), -math.sin(0.3), math.sin(0.3), math.cos(0.3)))
    center = fixed.TransformContinuousIndexToPhysicalPoint([19.5, 17.5])
    moving = sitk.Resample(fixed, fixed, sitk.Euler2DTransform(center, math.radians(8), (2.0, -1.0)), sitk.sitkLinear, 0.0)
    result = register(fixed, moving, resolution_mm=None, nodeo=NODEOSettings(levels=(2.0, 1.0), iterations=(30, 15)),
                      affine_settings=FAST_AFFINE)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0))
    ours = sitk.GetArrayFromImage(result.warped)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
    f = sitk.GetArrayFromImage(fixed)
    before = sitk.GetArrayFromImage(moving)
    assert np.abs(ours - f)[4:-4, 4:-4].mean() < 0.5 * np.abs(before - f)[4:-4, 4:-4].mean()


def _random_velocity_network(seed: int):
    """A float64 VelocityNetwork on a 6x7x8 control grid whose coarse velocity and state network
    are random (not the zero start), so that both parts of the field act."""
    from itk_odereg.ode.velocity import VelocityNetwork

    torch.manual_seed(seed)
    velocity = VelocityNetwork((6, 7, 8), (4.0, 4.0, 4.0), 3.0, hidden_channels=8).double()
    with torch.no_grad():
        velocity.coarse_velocity.normal_(0, 2.0)
        for p in velocity.state_net.parameters():
            p.normal_(0, 0.3)
    return velocity


def test_euler_fast_path_integrates_like_torchdiffeq():
    """The default solver (fixed-step Euler) runs without torchdiffeq's bookkeeping and skips the
    first step's warp (the particles start on the grid): same map and energy as torchdiffeq's Euler."""
    import torchdiffeq

    from itk_odereg.ode.flow import NeuralODEFlow, _Dynamics

    velocity = _random_velocity_network(seed=3)
    flow = NeuralODEFlow(velocity, steps=4)
    shape, spacing = (11, 13, 15), (2.0, 2.0, 2.0)
    u, energy = flow(shape, spacing)
    dynamics = _Dynamics(velocity, shape, torch.tensor(spacing, dtype=torch.float64))
    zero = torch.zeros(1, 3, *shape, dtype=torch.float64)
    ref_u, ref_e = torchdiffeq.odeint(dynamics, (zero, torch.zeros((), dtype=torch.float64)),
                                      torch.tensor([0.0, 1.0], dtype=torch.float64), method="euler",
                                      options={"step_size": 0.25})
    assert float(u.abs().max()) > 1.0          # a real flow, not the identity
    torch.testing.assert_close(u, ref_u[-1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(energy, ref_e[-1], atol=1e-10, rtol=1e-10)


def test_velocity_of_the_identity_state_is_the_network_at_zero():
    """state None (the first Euler step) evaluates the pointwise network once and broadcasts it:
    the same field, and the same gradients for every parameter, as a zero state at every point."""
    velocity = _random_velocity_network(seed=4)
    shape = (11, 13, 15)
    outputs, grads = [], []
    for state in (None, torch.zeros(1, 3, *shape, dtype=torch.float64)):
        velocity.zero_grad()
        v = velocity(state, shape)
        (v * torch.linspace(-1, 1, v.numel(), dtype=torch.float64).view_as(v)).sum().backward()
        outputs.append(v.detach())
        grads.append([p.grad.clone() for p in velocity.parameters()])
    zero = torch.zeros(1, 3, 1, 1, 1, dtype=torch.float64)
    assert float(velocity._bounded_response(zero).abs().max()) > 0.05   # the network's output at u = 0 is not 0
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_nodeo_level_stops_once_converged():
    """With a convergence threshold a level ends when its loss flattens (ANTs' convergence window);
    the record that ended it says so, and the result still registers."""
    from itk_odereg.registration.nodeo import nodeo_register

    shape = (24, 24, 24)
    base = phantom(shape, seed=8)
    control = torch.randn(1, 3, *ops.bspline_control_shape(shape, (6, 6, 6)), generator=torch.Generator().manual_seed(9))
    fixed = ops.warp(base, ops.bspline_to_dense(control, shape, (6, 6, 6)))
    common = dict(levels=(2.0, 1.0), iterations=(200, 200), control_spacing_mm=6.0, smoothing_mm=3.0)
    stopped = nodeo_register(fixed, base, (1.0, 1.0, 1.0), NODEOSettings(convergence_threshold=2e-3, **common))
    per_level = [sum(1 for r in stopped.loss_history if r["level"] == k) for k in (0, 1)]
    assert all(10 <= n < 200 for n in per_level), per_level
    for k in (0, 1):
        level = [r for r in stopped.loss_history if r["level"] == k]
        assert level[-1].get("converged") and not any(r.get("converged") for r in level[:-1])
    from itk_odereg.losses import make_metric

    lncc = make_metric("lncc")
    before, after = float(lncc(fixed, base)), float(lncc(fixed, ops.warp(base, stopped.displacement)))
    # LNCC of the true map is not 0 (flat regions have NCC 0): the stopped levels got at least
    # 90 % of the way from the unregistered loss to it (measured: beyond it).
    truth = float(lncc(fixed, fixed))
    assert after < truth + 0.1 * (before - truth), (before, after, truth)
    with pytest.raises(ValueError, match="convergence_threshold"):
        NODEOSettings(convergence_threshold=-1.0)


def test_auto_working_resolution_follows_the_fixed_image():
    from itk_odereg.core.grid import ImageGrid
    from itk_odereg.registration.driver import working_resolution

    grid = lambda spacing: ImageGrid((10, 10, 10), spacing, (0.0,) * 3, tuple(np.eye(3).ravel()))  # noqa: E731
    assert working_resolution("auto", grid((2.0, 2.0, 2.0))) is None        # its own 2 mm grid
    assert working_resolution("auto", grid((1.0, 1.0, 1.2))) is None        # 1 mm: its own grid
    assert working_resolution("auto", grid((0.5, 0.5, 3.0))) == 1.0         # finer than 1 mm: 1 mm
    assert working_resolution(3.0, grid((1.0, 1.0, 1.0))) == 3.0
    with pytest.raises(ValueError, match="'resolution_mm' must be a number"):
        working_resolution("fine", grid((1.0, 1.0, 1.0)))


def test_returned_map_integrates_the_optimized_flow_with_output_steps():
    """NODEO optimizes with `steps` Euler steps and returns the same velocity integrated with
    max(steps, output_steps): the finer solution of the optimized ODE."""
    from itk_odereg.registration.nodeo import nodeo_register

    shape = (20, 20, 20)
    base = phantom(shape, seed=10)
    fixed = base.roll(1, 2)
    # a 2 mm control grid: the flow is integrated on the 1 mm image grid itself
    settings = NODEOSettings(levels=(1.0,), iterations=(8,), steps=2, output_steps=4, control_spacing_mm=2.0,
                             smoothing_mm=2.0)
    result = nodeo_register(fixed, base, (1.0, 1.0, 1.0), settings)
    flow = result.flow
    assert flow.steps == 4
    with torch.no_grad():
        four, _ = flow(shape, (1.0, 1.0, 1.0))
        flow.steps = 2
        two, _ = flow(shape, (1.0, 1.0, 1.0))
    torch.testing.assert_close(result.displacement, four)
    assert float((four - two).abs().max()) > 1e-4       # the two integrations differ
    with pytest.raises(ValueError, match="output_steps"):
        NODEOSettings(output_steps=0)


@pytest.mark.parametrize("steps, coarse_steps, expected", [
    (4, 3, [3, 3, 4, 4]),        # the defaults: 3 on the coarse levels, 4 on the finest and the returned map
    (2, 3, [2, 2, 2, 4]),        # never more on a coarse level than on the finest
    (4, None, [4, 4, 4, 4]),     # None: ``steps`` everywhere
])
def test_coarse_levels_are_optimized_with_coarse_steps(monkeypatch, steps, coarse_steps, expected):
    """Each level's iterations integrate with that level's step count (min(coarse_steps, steps) below the
    finest), and the returned map with max(steps, output_steps)."""
    from itk_odereg.ode.flow import NeuralODEFlow
    from itk_odereg.registration.nodeo import nodeo_register

    steps_per_call = []
    original = NeuralODEFlow.forward

    def recording(self, *args, **kwargs):
        steps_per_call.append(self.steps)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NeuralODEFlow, "forward", recording)
    shape = (20, 20, 20)
    base = phantom(shape, seed=10)
    settings = NODEOSettings(levels=(4.0, 2.0, 1.0), iterations=(2, 2, 2), steps=steps, coarse_steps=coarse_steps,
                             output_steps=4, control_spacing_mm=4.0, smoothing_mm=2.0)
    nodeo_register(base.roll(1, 2), base, (1.0, 1.0, 1.0), settings)
    # one integration per iteration (2 per level), then one for the returned map
    assert steps_per_call == [expected[0]] * 2 + [expected[1]] * 2 + [expected[2]] * 2 + [expected[3]]


def test_coarse_steps_is_validated():
    with pytest.raises(ValueError, match="'coarse_steps' must be >= 1 or None"):
        NODEOSettings(coarse_steps=0)


def test_flow_spacing_ratio_sets_the_grid_the_flow_is_integrated_on():
    """The flow grid is about ``flow_spacing_ratio`` times the control spacing, never finer than the
    level; a coarser one still registers (benchmarks/README.md has its cost in Dice and time)."""
    from itk_odereg.registration.nodeo import _flow_level, nodeo_register
    from itk_odereg.registration.pyramid import pyramid_level

    level = pyramid_level((80, 96, 80), (2.0, 2.0, 2.0), 1.0)
    assert tuple(_flow_level(level, 6.0, 0.5).shape) == (54, 65, 54)      # 3 mm
    assert tuple(_flow_level(level, 6.0, 0.67).shape) == (41, 49, 41)     # about 4 mm
    assert tuple(_flow_level(level, 6.0, 0.25).shape) == (80, 96, 80)     # 1.5 mm: the level itself
    shape = (24, 24, 24)
    base = phantom(shape, seed=12)
    fixed = base.roll(1, 2)
    settings = NODEOSettings(levels=(1.0,), iterations=(20,), control_spacing_mm=6.0, smoothing_mm=3.0,
                             flow_spacing_ratio=1.0)
    result = nodeo_register(fixed, base, (1.0, 1.0, 1.0), settings)
    warped = ops.warp(base, result.displacement)
    assert float((warped - fixed).abs().mean()) < 0.8 * float((base - fixed).abs().mean())
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="flow_spacing_ratio"):
            NODEOSettings(flow_spacing_ratio=bad)


def test_same_seed_gives_bit_identical_outputs_on_cpu():
    fixed_t = phantom((20, 22, 24), seed=11)
    fixed = to_sitk(fixed_t, (2.0, 2.0, 2.0))
    moving = to_sitk(fixed_t.roll(2, 3), (2.0, 2.0, 2.0))
    kwargs = dict(iterations=(6, 4), resolution_mm=None, affine_settings=FAST_AFFINE, seed=3)
    first, second = register(fixed, moving, **kwargs), register(fixed, moving, **kwargs)
    assert np.array_equal(sitk.GetArrayFromImage(first.warped), sitk.GetArrayFromImage(second.warped))
    assert np.array_equal(first.deformable_field_mm, second.deformable_field_mm)
    assert np.array_equal(first.inverse_field_mm, second.inverse_field_mm)
    assert np.array_equal(first.affine_matrix, second.affine_matrix)


def test_affine_mutual_information_samples_a_quarter_of_the_voxels_reproducibly(monkeypatch):
    """The affine stage's MI draws AffineSettings.mi_samples of the voxels (0.25 by default) from
    its seeded generator: the same seed gives the same affine, and None compares every voxel."""
    import itk_odereg.losses.mutual_information as mi
    from itk_odereg.registration.affine import AffineSettings, affine_register

    drawn = []
    original = mi._sample_voxels

    def recording(fixed, moving, mask, index, samples, generator, op):
        drawn.append(samples)
        return original(fixed, moving, mask, index, samples, generator, op)

    monkeypatch.setattr(mi, "_sample_voxels", recording)
    g = torch.Generator().manual_seed(4)
    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24, generator=g), 3, 1, 1)
    moving = torch.roll(fixed, 1, 2) ** 2  # another contrast, shifted by a voxel
    index_to_world = np.diag([2.0, 2.0, 2.0, 1.0])
    settings = AffineSettings(metric="mi", level_spacings_mm=(4.0,), rigid_iterations=(8,), affine_iterations=(4,),
                              search_degrees=0)
    first = affine_register(fixed, index_to_world, moving, index_to_world, settings)
    assert drawn and set(drawn) == {0.25}
    again = affine_register(fixed, index_to_world, moving, index_to_world, settings)
    assert np.array_equal(first.matrix, again.matrix) and np.array_equal(first.translation, again.translation)
    drawn.clear()
    affine_register(fixed, index_to_world, moving, index_to_world, AffineSettings(
        metric="mi", mi_samples=None, level_spacings_mm=(4.0,), rigid_iterations=(8,), affine_iterations=(4,),
        search_degrees=0))
    assert drawn and set(drawn) == {None}
