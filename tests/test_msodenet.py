"""MS-ODENet: the model's parameterizations, solvers and export, the training loop, and the shipped models."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from itk_odereg import ops, register
from itk_odereg.cli import main as cli_main
from itk_odereg.core.intensity import normalize_intensity
from itk_odereg.msodenet import CascadeODENet, MSODENet, TrainSettings, load_model, rigid_displacement, train
from itk_odereg.msodenet._geometry import rotation_angles, rotation_matrix
from itk_odereg.msodenet.pretrained import load_pretrained, weights_path

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")

SHAPE = (25, 29, 27)


def randomized(model: MSODENet, seed: int = 0) -> MSODENet:
    """Random weights (instead of the zero-initialized networks) exercise every path."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def blob_pair(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    fixed = torch.exp(-((zz - 0.1) ** 2 + yy**2 + (xx + 0.1) ** 2) / 0.2)[None, None]
    moving = torch.roll(fixed, shifts=(1, -2, 1), dims=(2, 3, 4)) + 0.01 * torch.rand(1, 1, *SHAPE, generator=gen)
    return fixed.float(), moving.float()


# ------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("parameterization", ["bspline", "rigid", "dense"])
def test_model_without_the_force_term_starts_as_the_identity(parameterization):
    fixed, moving = blob_pair()
    u = MSODENet(parameterization, force_gain=0.0, global_search=False)(fixed, moving)
    assert u.shape == (1, 3, *SHAPE)
    assert u.abs().max() == 0


@pytest.mark.parametrize("parameterization", ["bspline", "rigid", "dense"])
def test_an_image_registered_to_itself_does_not_move_whatever_the_weights(parameterization):
    """Aligned images are a fixed point of the ODE: the networks' rate at alignment is subtracted."""
    fixed, _ = blob_pair()
    model = randomized(MSODENet(parameterization))
    with torch.no_grad():
        assert model(fixed, fixed).abs().max() < 1e-5
        # The same random networks do move a misaligned pair: the anchor removes a bias, not the rate.
        assert model(fixed, torch.roll(fixed, 2, dims=3)).abs().max() > 1e-2


def test_aligned_features_are_the_features_of_the_aligned_pair():
    """The anchor's closed form equals registration_features(fixed, fixed) (which it saves computing)."""
    from itk_odereg.msodenet._features import aligned_features, fixed_image_cues, registration_features

    fixed, _ = blob_pair()
    cues = fixed_image_cues(fixed)
    assert torch.equal(aligned_features(fixed, cues, 1.7), registration_features(fixed, fixed, cues, 1.7))


def test_shipped_cascade_leaves_an_image_registered_to_itself_alone():
    fixed, _ = brain_like_pair()
    result = register(fixed, fixed, method="msodenet", model="rigid+bspline", affine=None)
    field = sitk.GetArrayFromImage(result.displacement_field)
    assert np.linalg.norm(field, axis=-1).max() < 0.05  # mm


@pytest.mark.parametrize("parameterization", ["bspline", "dense"])
def test_untrained_deformable_model_reduces_a_misalignment(parameterization):
    """The classical force term alone (the starting point of training) already registers, without folding."""
    fixed, moving = blob_pair()
    with torch.no_grad():
        u = MSODENet(parameterization)(fixed, moving)
        before = (moving - fixed).square().mean()
        after = (ops.warp(moving, u, "border") - fixed).square().mean()
    assert after < 0.5 * before
    assert ops.jacobian_determinant(u).min() > 0.1


def test_mind_descriptor_ignores_the_contrast():
    """Two contrasts of one label image (one inverted, one not monotone) get the same descriptor."""
    from itk_odereg.msodenet._features import mind_descriptor

    labels = torch.zeros(1, 1, 16, 17, 18, dtype=torch.long)
    labels[..., 4:12, 5:13, 3:9] = 1
    labels[..., 6:10, 7:11, 9:15] = 2
    first = torch.tensor([0.0, 1.0, 0.5])[labels]
    second = torch.tensor([0.7, 0.2, 0.95])[labels]
    a, b = mind_descriptor(first), mind_descriptor(second)
    assert a.shape == (1, 6, 16, 17, 18)
    # Equal wherever only two labels meet in the 3x3x3 neighbourhood; everywhere close.
    assert (a - b).abs().mean() < 0.02


def test_rigid_force_fit_recovers_a_small_rigid_field():
    from itk_odereg.msodenet._features import rigid_force_fit

    omega, shift = torch.tensor([0.01, -0.02, 0.015], dtype=torch.float64), torch.tensor([0.5, -1.0, 0.25],
                                                                                         dtype=torch.float64)
    shape = (9, 10, 11)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    centre = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64).view(3, 1, 1, 1)
    r = (grid - centre).reshape(3, -1).t()
    field = (torch.linalg.cross(omega.expand_as(r), r) + shift).t().reshape(1, 3, *shape)
    fitted = rigid_force_fit(field, torch.ones(1, 1, *shape, dtype=torch.float64))
    assert torch.allclose(fitted[0], torch.cat([omega, shift]), atol=1e-5)


def test_rigid_force_fit_is_about_the_grid_centre_whatever_the_weights():
    """Weights off centre (edges on one side) must not turn a pure rotation into a shift."""
    from itk_odereg.msodenet._features import rigid_force_fit

    omega = torch.tensor([0.02, 0.01, -0.03], dtype=torch.float64)
    shape = (9, 10, 11)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    centre = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64).view(3, 1, 1, 1)
    r = (grid - centre).reshape(3, -1).t()
    field = torch.linalg.cross(omega.expand_as(r), r).t().reshape(1, 3, *shape)
    weight = torch.zeros(1, 1, *shape, dtype=torch.float64)
    weight[..., :4, 2:9, 5:] = 1.0
    fitted = rigid_force_fit(field, weight)
    assert torch.allclose(fitted[0], torch.cat([omega, torch.zeros(3, dtype=torch.float64)]), atol=1e-5)


def test_rotation_angles_invert_rotation_matrix():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        angles = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * torch.tensor([3.1, 1.5, 3.1],
                                                                                          dtype=torch.float64)
        R = rotation_matrix(angles)
        assert torch.allclose(rotation_angles(R), angles, atol=1e-9)


def test_rigid_rate_turns_the_warped_image_by_its_body_rate():
    """d(params)/dt from (omega, v) in the warped image's frame: R -> R (I + h [omega]x), t -> t + h R v."""
    from itk_odereg.msodenet._geometry import rigid_parameter_rate

    params = torch.tensor([[1.2, -0.9, 0.7, 3.0, -2.0, 5.0]], dtype=torch.float64)
    body = torch.tensor([[0.3, -0.2, 0.5, 1.0, 2.0, -1.5]], dtype=torch.float64)
    h = 1e-6
    stepped = params + h * rigid_parameter_rate(params, body)
    omega = body[0, :3]
    cross = torch.tensor([[0.0, -omega[2], omega[1]], [omega[2], 0.0, -omega[0]], [-omega[1], omega[0], 0.0]],
                         dtype=torch.float64)
    R = rotation_matrix(params[0, :3])
    assert torch.allclose((rotation_matrix(stepped[0, :3]) - R) / h, R @ cross, atol=1e-4)
    assert torch.allclose((stepped[0, 3:] - params[0, 3:]) / h, R @ body[0, 3:], atol=1e-4)


def asymmetric_head(shape=(57, 65, 53)):
    """A head-like ellipsoid with a 'cerebellum' bulging out at one end, an off-centre bright lobe and a
    dark core: no symmetry to confuse a search, in the outline (what a contrast change keeps) too."""
    g = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in shape],
                                   indexing="ij"))
    outline = ((g[0] / 17) ** 2 + (g[1] / 24) ** 2 + (g[2] / 15) ** 2 < 1)
    outline |= (((g[0] + 12) / 8) ** 2 + ((g[1] + 18) / 9) ** 2 + ((g[2] - 4) / 8) ** 2 < 1)
    head = outline.float() * 0.6
    head += ((((g[0] - 6) / 6) ** 2 + ((g[1] + 9) / 8) ** 2 + ((g[2] - 5) / 5) ** 2) < 1).float() * 0.4
    head -= ((g[0] / 5) ** 2 + ((g[1] - 8) / 6) ** 2 + (g[2] / 5) ** 2 < 1).float() * 0.4
    return head[None, None]


@pytest.mark.parametrize("angles_deg", [(70.0, -60.0, 75.0), (-120.0, 40.0, -30.0)])
def test_rigid_model_finds_a_head_turned_far(angles_deg):
    """The global search puts the ODE in the right basin; the ODE converges there (another contrast too)."""
    moving = asymmetric_head()
    shape = list(moving.shape[2:])
    truth = torch.tensor([[*[math.radians(a) for a in angles_deg], 2.0, -3.0, 1.5]])
    u_true = rigid_displacement(truth, shape, shape)
    fixed = ops.warp(moving, u_true, "zeros")
    inverted = torch.where(fixed > 0.05, 1.2 - fixed, fixed)  # another contrast, background kept dark
    head = fixed[0, 0] > 0.05
    for target in (fixed, inverted):
        with torch.no_grad():
            u = MSODENet("rigid")(target, moving)
        error = (u - u_true).square().sum(1)[0][head].mean().sqrt()
        assert error < 0.5, (angles_deg, float(error))  # voxels
    local = MSODENet("rigid", global_search=False)
    with torch.no_grad():
        assert (local(fixed, moving) - u_true).square().sum(1)[0][head].mean().sqrt() > 5.0


def test_global_search_is_only_for_rigid_models():
    with pytest.raises(ValueError, match="global_search"):
        MSODENet("bspline", global_search=True)


def test_rigid_displacement_is_the_rotation_about_the_centre():
    params = torch.tensor([[0.3, -0.2, 0.5, 2.0, -1.0, 0.5]], dtype=torch.float64)
    shape = [9, 11, 13]
    u = rigid_displacement(params, shape, shape)
    R = rotation_matrix(params[0, :3])
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    centre = torch.tensor([(s - 1) / 2 for s in shape], dtype=torch.float64)
    for index in [(0, 0, 0), (4, 5, 6), (8, 3, 12)]:
        p = torch.tensor(index, dtype=torch.float64)
        expected = R @ (p - centre) + centre + params[0, 3:] - p
        assert torch.allclose(u[0, :, index[0], index[1], index[2]], expected, atol=1e-10)


def test_rigid_displacement_is_the_same_motion_on_a_coarser_level():
    params = torch.tensor([[0.2, 0.1, -0.3, 3.0, 1.0, -2.0]], dtype=torch.float64)
    fine, coarse = [17, 21, 25], [9, 11, 13]
    u_fine = rigid_displacement(params, fine, fine)
    u_coarse = rigid_displacement(params, coarse, fine)
    # Coarse voxel k sits on fine voxel 2k; displacements scale by the voxel size ratio.
    assert torch.allclose(u_coarse * 2, u_fine[:, :, ::2, ::2, ::2], atol=1e-10)


def test_bspline_parameterization_is_the_bspline_op():
    model = MSODENet("bspline")
    theta = torch.randn(1, 3, *[(s - 1) // 4 + 4 for s in SHAPE])
    dense = model.displacement(theta, list(SHAPE), list(SHAPE))
    assert torch.equal(dense, ops.bspline_to_dense(theta, SHAPE, [4, 4, 4]))


@pytest.mark.parametrize("parameterization", ["bspline", "dense"])
def test_adaptive_heun_agrees_with_fine_euler(parameterization):
    fixed, moving = blob_pair()
    heun = randomized(MSODENet(parameterization, solver="adaptive_heun", tolerance=1e-4))
    euler = randomized(MSODENet(parameterization, steps=(40, 40, 4)))
    with torch.no_grad():
        a, b = heun.integrate(fixed, moving), euler.integrate(fixed, moving)
    assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_dense_parameterization_is_the_finest_grid_displacement():
    """theta is the displacement in finest-grid voxels; a level sees it resampled and rescaled to its voxels."""
    model = MSODENet("dense")
    theta = model.initial_theta(list(SHAPE), torch.zeros(1))
    assert theta.shape == (1, 3, *SHAPE) and theta.abs().max() == 0
    theta = torch.randn(1, 3, *SHAPE, dtype=torch.float64)
    assert torch.equal(model.displacement(theta, list(SHAPE), list(SHAPE)), theta)
    # A uniform shift of 4 finest voxels along axis 1 is 2 voxels of the factor-2 level.
    shift = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    shift[:, 1] = 4.0
    coarse = [(s - 1) // 2 + 1 for s in SHAPE]
    u = model.displacement(shift, coarse, list(SHAPE))
    assert u.shape == (1, 3, *coarse)
    assert torch.allclose(u[:, 1], torch.full_like(u[:, 1], 2.0)) and u[:, [0, 2]].abs().max() == 0


def test_dense_rate_smoothing_is_a_normalized_gaussian():
    from itk_odereg.msodenet.model import DenseVelocity

    net = DenseVelocity(width=4, sigma=2.0)
    assert net.kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert net.kernel.argmax().item() == net.radius and torch.equal(net.kernel, net.kernel.flip(0))
    assert "kernel" not in net.state_dict()  # derived from sigma, not a weight
    # Normalized with replicated edges: a uniform rate passes unchanged, right up to the faces.
    uniform = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1).expand(1, 3, 6, 7, 5).contiguous()
    assert torch.allclose(net.smooth(uniform), uniform, atol=1e-6)
    # and an impulse spreads into the separable 3D Gaussian, which sums to one.
    impulse = torch.zeros(1, 3, 11, 11, 11)
    impulse[:, :, 5, 5, 5] = 1.0
    smoothed = net.smooth(impulse)
    assert smoothed.sum((2, 3, 4)) == pytest.approx(torch.ones(1, 3), abs=1e-5)
    assert smoothed[0, 0, 5, 5, 5] == pytest.approx(net.kernel.max().item() ** 3)


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="parameterization"):
        MSODENet("affine")
    with pytest.raises(ValueError, match="solver"):
        MSODENet("bspline", solver="rk45")
    with pytest.raises(ValueError, match="steps"):
        MSODENet("bspline", steps=(1, 2))


@pytest.mark.parametrize("parameterization", ["bspline", "dense"])
def test_gradient_checkpointing_gives_the_same_gradients(parameterization):
    fixed, moving = blob_pair()
    grads = []
    for checkpointing in (False, True):
        model = randomized(MSODENet(parameterization))
        model.checkpointing = checkpointing
        model.integrate(fixed, moving).square().sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------- export

_FRESH = textwrap.dedent(
    """
    import sys
    import torch
    torch.ops.load_library(sys.argv[1])
    assert "itk_odereg" not in sys.modules
    module = torch.jit.load(sys.argv[2]) if sys.argv[2].endswith(".pt") else torch.export.load(sys.argv[2]).module()
    fixed, moving = torch.load(sys.argv[3])
    torch.save(module(fixed, moving), sys.argv[4])
    assert not any(name.startswith("itk_odereg") for name in sys.modules)
    """
)


def run_fresh(tmp_path, model_file, fixed, moving):
    torch.save((fixed, moving), tmp_path / "inputs.pt")
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    subprocess.run([sys.executable, str(script), ops.library_path(), str(model_file), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("deformable", ["bspline", "dense"])
def test_torchscript_cascade_runs_in_a_fresh_process(tmp_path, deformable):
    fixed, moving = blob_pair()
    model = CascadeODENet(randomized(MSODENet("rigid"), 1), randomized(MSODENet(deformable), 2)).eval()
    with torch.no_grad():
        expected = model(fixed, moving)
    torch.jit.save(torch.jit.script(model), tmp_path / "model.pt")
    out = run_fresh(tmp_path, tmp_path / "model.pt", fixed, moving)
    assert expected.abs().max() > 0.1
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["bspline", "dense", "rigid"])
def test_torch_export_program_runs_in_a_fresh_process(tmp_path, parameterization):
    fixed, moving = blob_pair()
    model = randomized(MSODENet(parameterization), 3)
    with torch.no_grad():
        expected = model(fixed, moving)
    program = torch.export.export(model, (fixed, moving))
    torch.export.save(program, tmp_path / "model.pt2")
    out = run_fresh(tmp_path, tmp_path / "model.pt2", fixed, moving)
    assert expected.abs().max() > 0.1
    assert torch.allclose(out, expected, atol=1e-5)


# ------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def label_maps(tmp_path_factory):
    """Three small 'subjects': nested ellipsoids with shifted centres, 2 mm voxels."""
    folder = tmp_path_factory.mktemp("labels")
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in (40, 48, 40)], indexing="ij")
    for k in range(1, 4):
        c = np.array([20, 24, 20]) + np.array([k - 2, 1 - k, k % 2])
        r = ((zz - c[0]) / 14) ** 2 + ((yy - c[1]) / 17) ** 2 + ((xx - c[2]) / 14) ** 2
        labels = (r < 1).astype(np.int32) + (r < 0.5) + (r < 0.15) * 2 + ((xx - c[2]) > 0) * (r < 1)
        image = sitk.GetImageFromArray(labels.astype(np.int32))
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(folder / f"subject{k:02d}.nii.gz"))
    return folder


def quick_settings(**kw):
    return TrainSettings(**dict(dict(resolution_mm=8.0, iterations=3, checkpoint_every=2, train_subjects=(1, 2, 3),
                                     threads=1), **kw))


def losses(path):
    return [json.loads(line)["loss"] for line in open(path.with_suffix(".log.jsonl"))]


def test_training_writes_a_model_and_is_reproducible(label_maps, tmp_path):
    for name in ("a", "b"):
        train(label_maps, tmp_path / f"{name}.pt", quick_settings(), log=lambda s: None)
    assert losses(tmp_path / "a.pt") == losses(tmp_path / "b.pt")
    model, metadata = load_model(tmp_path / "a.pt")
    assert metadata["resolution_mm"] == 8.0 and metadata["iterations"] == 3
    assert model.parameterization == "bspline"
    assert (tmp_path / "a.ckpt").exists()


def test_training_resumes_from_its_checkpoint(label_maps, tmp_path):
    train(label_maps, tmp_path / "full.pt", quick_settings(iterations=4), log=lambda s: None)
    train(label_maps, tmp_path / "part.pt", quick_settings(iterations=2), log=lambda s: None)
    lines = []
    train(label_maps, tmp_path / "part.pt", quick_settings(iterations=4), log=lines.append)
    assert any("resumed" in line and "iteration 2" in line for line in lines)
    assert losses(tmp_path / "part.pt") == pytest.approx(losses(tmp_path / "full.pt"), rel=1e-5)


def test_resumed_training_runs_at_the_learning_rate_it_is_given(label_maps, tmp_path):
    """A fine-tuning phase: resuming with a lower rate must use it, not the checkpoint's."""
    train(label_maps, tmp_path / "m.pt", quick_settings(iterations=2), log=lambda s: None)
    lines = []
    train(label_maps, tmp_path / "m.pt", quick_settings(iterations=3, learning_rate=1e-5), log=lines.append)
    assert any("learning rate 0.0005 -> 1e-05" in line for line in lines)
    state = torch.load(tmp_path / "m.ckpt", weights_only=False)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-5]


def test_rigid_training_runs(label_maps, tmp_path):
    train(label_maps, tmp_path / "rigid.pt", quick_settings(parameterization="rigid", iterations=2),
          log=lambda s: None)
    model, _ = load_model(tmp_path / "rigid.pt")
    assert model.parameterization == "rigid"


def test_dense_training_runs_and_its_model_file_registers(label_maps, tmp_path):
    """Through the command line; then register() takes the written file like any trained model."""
    assert TrainSettings(parameterization="dense").resolved_lambda_reg() == 10.0
    assert cli_main(["train", "--label-maps", str(label_maps), "--output", str(tmp_path / "dense.pt"), "--resolution",
                     "8", "--iterations", "2", "--subjects", "1", "2", "3", "--threads", "1",
                     "--parameterization", "dense"]) == 0
    records = [json.loads(line) for line in open(tmp_path / "dense.log.jsonl")]
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    assert all(r["reg"] > 0 for r in records)  # the diffusion penalty is on (lambda_reg 10)
    model, metadata = load_model(tmp_path / "dense.pt")
    assert model.parameterization == "dense" and metadata["training"]["parameterization"] == "dense"
    assert model.steps == [5, 5, 4]
    fixed, moving = brain_like_pair()
    result = register(fixed, moving, method="msodenet", model=str(tmp_path / "dense.pt"), affine=None)
    field = sitk.GetArrayFromImage(result.displacement_field)
    assert np.isfinite(field).all() and np.linalg.norm(field, axis=-1).max() > 0.5  # it moved something (mm)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0))
    assert np.abs(sitk.GetArrayFromImage(result.warped) - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_training_names_missing_subjects(label_maps, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"subject\(s\) \[7\]"):
        train(label_maps, tmp_path / "x.pt", quick_settings(train_subjects=(1, 7)), log=lambda s: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_training_on_a_missing_cuda_device_is_named(label_maps, tmp_path, capsys):
    with pytest.raises(RuntimeError, match=r"train\(\): device 'cuda' was requested"):
        train(label_maps, tmp_path / "x.pt", quick_settings(device="cuda"), log=lambda s: None)
    assert cli_main(["train", "--label-maps", str(label_maps), "--output", str(tmp_path / "y.pt"), "--device",
                     "cuda"]) == 1
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_train_command_line(label_maps, tmp_path, capsys):
    code = cli_main(["train", "--label-maps", str(label_maps), "--output", str(tmp_path / "m.pt"), "--resolution",
                     "8", "--iterations", "2", "--subjects", "1", "2", "3", "--threads", "1"])
    assert code == 0 and (tmp_path / "m.pt").exists()
    assert cli_main(["train", "--label-maps", str(tmp_path / "nowhere"), "--output", str(tmp_path / "m2.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------- registering with a model
# Most tests register with model files written by save_model, with random weights, so that
# the maps are far from the identity; the last ones use the shipped models.


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from itk_odereg.msodenet import save_model

    folder = tmp_path_factory.mktemp("models")
    for name, parameterization, seed in (("bspline", "bspline", 4), ("rigid", "rigid", 5)):
        model = randomized(MSODENet(parameterization), seed)
        with torch.no_grad():  # a gentle map: random weights, scaled down
            for p in model.parameters():
                p.mul_(0.5)
        save_model(model, folder / f"{name}.pt", {"resolution_mm": 4.0})
    return folder


def brain_like_pair():
    """A smooth 'head' and a rotated, shifted copy, on oblique anisotropic grids (sitk images)."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in (40, 50, 44)], indexing="ij")
    r = (zz / 0.8) ** 2 + (yy / 0.9) ** 2 + (xx / 0.75) ** 2
    head = (r < 1) * (0.6 + 0.4 * np.cos(6 * xx) * np.cos(5 * yy)) + (r < 0.3) * 0.5
    fixed = sitk.GetImageFromArray(head.astype(np.float32))
    fixed.SetSpacing((2.2, 2.0, 2.5))
    fixed.SetOrigin((-40.0, 12.0, 30.0))
    fixed.SetDirection(sitk.VersorTransform((0.2, 0.3, 0.93), math.radians(15)).GetMatrix())
    centre = fixed.TransformContinuousIndexToPhysicalPoint([21.5, 24.5, 19.5])
    motion = sitk.Euler3DTransform(centre, math.radians(8), math.radians(-5), math.radians(6), (4.0, -3.0, 2.0))
    moving = sitk.Resample(fixed, fixed, motion, sitk.sitkLinear, 0.0)
    return fixed, moving


@pytest.mark.parametrize("method", ["msodenet", "msodenet+nodeo"])
def test_register_with_a_model_file_matches_sitk_resample(method, model_files):
    fixed, moving = brain_like_pair()
    kw = {"iterations": (10, 5)} if method == "msodenet+nodeo" else {}
    result = register(fixed, moving, method=method, model=str(model_files / "bspline.pt"), affine=None, **kw)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0))
    ours = sitk.GetArrayFromImage(result.warped)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
    field = sitk.GetArrayFromImage(result.displacement_field)
    assert np.linalg.norm(field, axis=-1).max() > 0.5  # the model moved something (mm)
    assert "msodenet" in result.timings


def test_msodenet_inverse_transform_inverts_forward(model_files):
    fixed, moving = brain_like_pair()
    result = register(fixed, moving, method="msodenet", model=str(model_files / "bspline.pt"), affine=None)
    rng = np.random.default_rng(1)
    size = np.array(fixed.GetSize())
    errors = []
    for _ in range(100):
        index = (0.3 + 0.4 * rng.random(3)) * (size - 1)
        p = np.array(fixed.TransformContinuousIndexToPhysicalPoint(index.tolist()))
        back = np.array(result.inverse_transform.TransformPoint(result.transform.TransformPoint(p.tolist())))
        errors.append(np.linalg.norm(back - p) / min(fixed.GetSpacing()))
    assert max(errors) < 0.1, max(errors)


def test_msodenet_errors_are_named(model_files, tmp_path):
    fixed, moving = brain_like_pair()
    with pytest.raises(ValueError, match='invalid model "affine"'):
        register(fixed, moving, method="msodenet", model="affine", affine=None)
    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        register(fixed, moving, method="msodenet", model=str(tmp_path / "missing.pt"), affine=None)
    flat = sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="3D"):
        register(flat, flat, method="msodenet", model=str(model_files / "bspline.pt"), affine=None)


def test_export_command_writes_a_loadable_module(model_files, tmp_path):
    fixed, moving = blob_pair()
    model_file = str(model_files / "bspline.pt")
    assert cli_main(["export", "--model", model_file, "-o", str(tmp_path / "m.pt")]) == 0
    module, _ = load_pretrained(model_file)
    with torch.no_grad():   # the exported module normalizes its inputs as the engine does
        expected = module(normalize_intensity(fixed), normalize_intensity(moving))
    out = run_fresh(tmp_path, tmp_path / "m.pt", fixed, moving)
    assert expected.abs().max() > 0.05
    assert torch.allclose(out, expected, atol=1e-5)
    assert cli_main(["export", "--model", model_file, "-o", str(tmp_path / "m.txt")]) == 1
    assert cli_main(["export", "--model", model_file, "-o", model_file]) == 1  # never overwrite an input


def test_register_command_with_method_msodenet(model_files, tmp_path):
    fixed, moving = brain_like_pair()
    sitk.WriteImage(fixed, str(tmp_path / "f.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "m.nii.gz"))
    code = cli_main(["register", "-f", str(tmp_path / "f.nii.gz"), "-m", str(tmp_path / "m.nii.gz"), "-o",
                     str(tmp_path / "out_"), "--method", "msodenet", "--model", str(model_files / "bspline.pt"),
                     "--affine", "none", "--quiet"])
    assert code == 0
    assert (tmp_path / "out_Warped.nii.gz").exists() and (tmp_path / "out_1Warp.nii.gz").exists()


def test_simpleitk_method_and_itk_filter_take_the_msodenet_method(model_files):
    import itk

    from itk_odereg import ODERegistrationFilter, ODERegistrationMethod

    fixed, moving = brain_like_pair()
    method = ODERegistrationMethod()
    method.SetMethod("msodenet")
    method.SetModel(str(model_files / "bspline.pt"))
    method.SetAffine(None)
    transform = method.Execute(fixed, moving)
    reference = register(fixed, moving, method="msodenet", model=str(model_files / "bspline.pt"), affine=None)
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    assert np.abs(warped - sitk.GetArrayFromImage(reference.warped)).max() < 1e-4
    with pytest.raises(ValueError, match='invalid method "syn"'):
        method.SetMethod("syn")
    f_itk = itk.image_from_array(sitk.GetArrayFromImage(fixed))
    m_itk = itk.image_from_array(sitk.GetArrayFromImage(moving))
    reg = ODERegistrationFilter.New(f_itk, m_itk, Method="msodenet", Model=str(model_files / "bspline.pt"),
                                    Affine=None)
    reg.Update()
    assert reg.GetMethod() == "msodenet" and itk.array_from_image(reg.GetOutput()).shape == (40, 50, 44)


# ------------------------------------------------------------------------------- the shipped models


def _map_error_mm(transform: sitk.Transform, truth: sitk.Transform, image: sitk.Image, mask: np.ndarray) -> float:
    """Mean distance (mm) between two fixed-to-moving maps over the voxels of ``mask``."""
    error = []
    for index in np.argwhere(mask)[::7]:
        point = image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
        error.append(np.linalg.norm(np.subtract(transform.TransformPoint(point), truth.TransformPoint(point))))
    return float(np.mean(error))


def test_shipped_models_exist_and_are_small():
    for name in ("bspline.pt", "rigid.pt"):
        path = weights_path(name)
        assert path.is_file(), f"{path} is missing from the package"
        assert path.stat().st_size < 5 * 2**20
        model, metadata = load_model(path)
        assert metadata["resolution_mm"] == 2.0
    # The B-spline network is trained; the rigid one ships untrained (its force term alone), and says so.
    assert load_model(weights_path("bspline.pt"))[1]["iterations"] > 0
    assert "untrained" in load_model(weights_path("rigid.pt"))[1]["note"]


def test_shipped_cascade_recovers_a_rigid_motion():
    """A head moved by 5 to 8 degrees and ~5 mm: the shipped rigid+bspline cascade undoes most of it."""
    fixed, moving = brain_like_pair()
    head = sitk.GetArrayFromImage(fixed) > 0
    centre = fixed.TransformContinuousIndexToPhysicalPoint([21.5, 24.5, 19.5])
    motion = sitk.Euler3DTransform(centre, math.radians(8), math.radians(-5), math.radians(6), (4.0, -3.0, 2.0))
    # moving = fixed o motion, so the fixed-to-moving map is motion^-1.
    truth = motion.GetInverse()
    before = _map_error_mm(sitk.Transform(3, sitk.sitkIdentity), truth, fixed, head)
    result = register(fixed, moving, method="msodenet", model="rigid+bspline", affine=None)
    after = _map_error_mm(result.transform, truth, fixed, head)
    assert before > 5.0
    assert after < 0.5 * before, (before, after)


def test_shipped_cascade_exports_and_runs_in_a_fresh_process(tmp_path):
    from itk_odereg.msodenet.export import export_model

    fixed, moving = blob_pair()
    module, _ = load_pretrained("rigid+bspline")
    with torch.no_grad():
        expected = module(normalize_intensity(fixed), normalize_intensity(moving))
    export_model("rigid+bspline", tmp_path / "shipped.pt")
    out = run_fresh(tmp_path, tmp_path / "shipped.pt", fixed, moving)
    assert torch.allclose(out, expected, atol=1e-5)

