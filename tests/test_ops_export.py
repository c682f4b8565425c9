"""The ops under TorchScript (in a fresh process that only loads the library), torch.compile and torch.export."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from itk_odereg import ops

# torch.jit.script is deprecated in this torch but is what libtorch deployments load.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")

SHAPE = (6, 7)
SPACING = (2, 3)


def scripted_pipeline(image: torch.Tensor, control: torch.Tensor):
    dense = torch.ops.itk_odereg.bspline_to_dense(control, [6, 7], [2, 3])
    warped = torch.ops.itk_odereg.warp(image, dense, "border")
    det = torch.ops.itk_odereg.jacobian_determinant(dense)
    energy = torch.ops.itk_odereg.diffusion_energy(dense, [1.0, 2.0])
    return warped, dense, det, energy


def make_inputs(dtype=torch.float64):
    image = torch.randn(2, 2, *SHAPE, dtype=dtype)
    control = torch.randn(2, 2, *ops.bspline_control_shape(SHAPE, SPACING), dtype=dtype) * 1.5
    return image, control


# --------------------------------------------------------------------------- (a) TorchScript

_SUBPROCESS = textwrap.dedent(
    """
    import sys
    import torch

    library, model_path, inputs_path, outputs_path = sys.argv[1:5]
    torch.ops.load_library(library)
    torch.ops.load_library(library)  # a second load is a no-op, not a duplicate registration
    assert "itk_odereg" not in sys.modules, sorted(m for m in sys.modules if "itk" in m)

    module = torch.jit.load(model_path)
    image, control = torch.load(inputs_path)
    image.requires_grad_(True)
    control.requires_grad_(True)
    warped, dense, det, energy = module(image, control)
    # Autograd is registered in C++: gradients flow without the Python package.
    loss = (warped ** 2).sum() + det.sum() + energy
    grad_image, grad_control = torch.autograd.grad(loss, (image, control))
    torch.save(
        {
            "outputs": [t.detach() for t in (warped, dense, det, energy)],
            "grad_image": grad_image,
            "grad_control": grad_control,
            # An editable install's import hook (``__editable___itk_odereg_*_finder``) is
            # loaded by a .pth file at start-up; it is not the package.
            "modules": sorted(m for m in sys.modules if "itk" in m and not m.startswith("__editable__")),
        },
        outputs_path,
    )
    """
)


def test_torchscript_runs_in_fresh_process_with_only_the_library(tmp_path):
    scripted = torch.jit.script(scripted_pipeline)
    graph = str(scripted.graph)
    for op in ("itk_odereg::warp", "itk_odereg::bspline_to_dense", "itk_odereg::jacobian_determinant",
               "itk_odereg::diffusion_energy"):
        assert op in graph
    model_path = tmp_path / "pipeline.pt"
    scripted.save(str(model_path))

    image, control = make_inputs()
    torch.save((image, control), tmp_path / "inputs.pt")

    # In-process reference: the scripted function and eager wrappers agree.
    img, ctl = image.clone().requires_grad_(True), control.clone().requires_grad_(True)
    warped, dense, det, energy = scripted(img, ctl)
    eager = (ops.warp(image, ops.bspline_to_dense(control, SHAPE, SPACING), "border"),)
    torch.testing.assert_close(warped, eager[0], atol=0, rtol=0)
    loss = (warped**2).sum() + det.sum() + energy
    grad_image, grad_control = torch.autograd.grad(loss, (img, ctl))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, ops.library_path(), str(model_path), str(tmp_path / "inputs.pt"),
         str(tmp_path / "outputs.pt")],
        cwd=str(tmp_path),  # not the repo root: the package must not be importable by accident
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    got = torch.load(tmp_path / "outputs.pt")
    assert got["modules"] == []
    for a, b in zip(got["outputs"], (warped, dense, det, energy)):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)
    torch.testing.assert_close(got["grad_image"], grad_image, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got["grad_control"], grad_control, atol=1e-12, rtol=1e-12)
    assert grad_control.abs().sum() > 0


def test_torchscript_module_with_defaults():
    class Module(torch.nn.Module):
        def forward(self, image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
            # Default padding ("zeros") and default threshold (0.5) through TorchScript.
            return torch.ops.itk_odereg.warp(image, displacement).sum() + torch.ops.itk_odereg.jacobian_penalty(
                displacement
            ) + torch.ops.itk_odereg.bending_energy(displacement)

    scripted = torch.jit.script(Module())
    image = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    u = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    expected = ops.warp(image, u, "zeros").sum() + ops.jacobian_penalty(u, 0.5) + ops.bending_energy(u)
    torch.testing.assert_close(scripted(image, u), expected, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- (b) torch.compile


def pipeline(image, displacement, control):
    dense = ops.bspline_to_dense(control, SHAPE, SPACING)
    warped = ops.warp(image, displacement + dense, "zeros")
    loss = (warped**2).mean()
    loss = loss + ops.diffusion_energy(dense) + ops.bending_energy(dense, (1.0, 2.0))
    loss = loss + ops.jacobian_penalty(dense, 1.2) + ops.jacobian_determinant(dense).mean()
    return loss, ops.compose(displacement, dense)


def test_compile_aot_eager_forward_and_backward_match_eager():
    torch._dynamo.reset()
    image, control = make_inputs()
    displacement = torch.randn(2, 2, *SHAPE, dtype=torch.float64)
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")

    eager_in = [t.clone().requires_grad_(True) for t in (image, displacement, control)]
    loss_e, comp_e = pipeline(*eager_in)
    grads_e = torch.autograd.grad(loss_e + comp_e.sum(), eager_in)

    comp_in = [t.clone().requires_grad_(True) for t in (image, displacement, control)]
    loss_c, comp_c = compiled(*comp_in)
    grads_c = torch.autograd.grad(loss_c + comp_c.sum(), comp_in)

    torch.testing.assert_close(loss_c, loss_e, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(comp_c, comp_e, atol=1e-12, rtol=1e-12)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_compile_dynamic_shapes_one_graph_for_all_sizes():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()

    def fn(image, displacement, control):
        height, width = image.shape[2:]
        dense = ops.bspline_to_dense(control, (height, width), SPACING)
        warped = ops.warp(image, displacement + dense, "border")
        return ((warped**2).mean() + ops.diffusion_energy(dense) + ops.bending_energy(displacement, (1.0, 2.0))
                + ops.jacobian_penalty(dense, 1.2) + ops.jacobian_determinant(displacement).mean())

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
    # Sizes chosen so that no two dims coincide (duck sizing would add equality guards).
    for shape in [(10, 12), (9, 11), (13, 8)]:
        image = torch.randn(2, 1, *shape, dtype=torch.float64)
        u = torch.randn(2, 2, *shape, dtype=torch.float64)
        control = torch.randn(2, 2, *ops.bspline_control_shape(shape, SPACING), dtype=torch.float64)
        xs = [t.clone().requires_grad_(True) for t in (image, u, control)]
        ys = [t.clone().requires_grad_(True) for t in (image, u, control)]
        got, expected = compiled(*xs), fn(*ys)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
        for a, b in zip(torch.autograd.grad(got, xs), torch.autograd.grad(expected, ys)):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert counter.frame_count == 1


def test_compile_inductor_forward_matches_eager():
    # The default (inductor) backend, forward only. The graph holds only the
    # custom ops (extern kernels) so no C++ kernel has to be compiled: this takes
    # a few seconds on CPU. A graph with pointwise math took ~25 s cold on a
    # 2-core machine, too slow for this suite; that path is covered by aot_eager.
    torch._dynamo.reset()

    def forward_only(image, control):
        dense = ops.bspline_to_dense(control, SHAPE, SPACING)
        return ops.warp(image, dense, "border"), ops.jacobian_determinant(dense), ops.diffusion_energy(dense)

    image, control = make_inputs(torch.float32)
    compiled = torch.compile(forward_only, fullgraph=True)
    with torch.no_grad():
        got = compiled(image, control)
        expected = forward_only(image, control)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_compile_reports_bad_input_at_trace_time():
    torch._dynamo.reset()
    compiled = torch.compile(lambda i, u: ops.warp(i, u, "zeros"), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match=r"'image' and 'displacement' must have the same spatial size"):
        compiled(torch.randn(1, 1, 4, 5), torch.randn(1, 2, 4, 6))


# --------------------------------------------------------------------------- (c) torch.export


class Registration(torch.nn.Module):
    def __init__(self):
        super().__init__()
        grid = ops.bspline_control_shape(SHAPE, SPACING)
        self.control = torch.nn.Parameter(torch.randn(1, 2, *grid) * 1.5)

    def forward(self, image):
        control = self.control.expand(image.shape[0], -1, -1, -1)
        dense = ops.bspline_to_dense(control, SHAPE, SPACING)
        return ops.warp(image, dense, "border"), ops.jacobian_determinant(dense)


def test_export_save_load_roundtrip(tmp_path):
    module = Registration()
    image = torch.randn(2, 3, *SHAPE)
    exported = torch.export.export(module, (image,))
    code = exported.graph_module.code
    assert "torch.ops.itk_odereg.bspline_to_dense.default" in code
    assert "torch.ops.itk_odereg.warp.default" in code

    with torch.no_grad():
        expected = module(image)
        got = exported.module()(image)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    path = tmp_path / "registration.pt2"
    torch.export.save(exported, str(path))
    loaded = torch.export.load(str(path))
    other = torch.randn(2, 3, *SHAPE)
    with torch.no_grad():
        got = loaded.module()(other)
        expected = module(other)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_export_with_dynamic_shapes():
    class Regularized(torch.nn.Module):
        def forward(self, image, displacement):
            return (ops.warp(image, displacement, "zeros"), ops.jacobian_determinant(displacement),
                    ops.bending_energy(displacement, (1.0, 2.0)))

    batch = torch.export.Dim("batch", min=1, max=8)
    height = torch.export.Dim("height", min=3, max=64)
    width = torch.export.Dim("width", min=3, max=64)
    dims = {0: batch, 2: height, 3: width}
    exported = torch.export.export(
        Regularized(), (torch.randn(2, 1, 6, 7), torch.randn(2, 2, 6, 7)), dynamic_shapes=(dims, dims)
    )
    image, u = torch.randn(3, 1, 9, 5), torch.randn(3, 2, 9, 5)
    for a, b in zip(exported.module()(image, u), Regularized()(image, u)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# --------------------------------------------------------------------------- (d) library path


def test_library_path_exists_and_loads_twice():
    path = ops.library_path()
    assert os.path.isabs(path) and os.path.isfile(path)
    assert os.path.basename(path).startswith("_C")
    assert ops.has_ops()
    torch.ops.load_library(path)
    torch.ops.load_library(path)
    image = torch.randn(1, 1, 4, 5)
    assert torch.equal(torch.ops.itk_odereg.warp(image, torch.zeros(1, 2, 4, 5)), image)
    assert path in torch.ops.loaded_libraries or os.path.realpath(path) in {
        os.path.realpath(p) for p in torch.ops.loaded_libraries
    }
