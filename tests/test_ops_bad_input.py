"""Bad inputs give a clear RuntimeError naming the op and the argument, on every path into the ops.

Paths: the Python wrappers (itk_odereg.ops.*), the dispatcher (torch.ops.itk_odereg.*.default,
i.e. the C++ checks), the fake kernels used by torch.compile / torch.export (FakeTensorMode,
i.e. the Python mirror in ops/_checks.py), and the pure-PyTorch fallback used when the
compiled library is missing.
"""
from __future__ import annotations

import re
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from itk_odereg import ops

f32, f64 = torch.float32, torch.float64


def T(*shape, dtype=f32):
    if dtype in (torch.int32, torch.int64):
        return torch.zeros(*shape, dtype=dtype)
    return torch.randn(*shape, dtype=dtype)


def _esc(s):
    return re.escape(s)


# (id, op name, args factory, regex that must appear in the message)
WARP_CASES = [
    ("image-rank-mismatch", lambda: (T(1, 1, 4, 5), T(1, 3, 3, 4, 5)),
     r"itk_odereg\.warp\(\): 'image' must have shape \[N, C, \*S\] with 3 spatial dims"),
    ("image-5d-disp-2d", lambda: (T(1, 1, 3, 4, 5), T(1, 2, 4, 5)),
     r"itk_odereg\.warp\(\): 'image' must have shape \[N, C, \*S\] with 2 spatial dims"),
    ("1d", lambda: (T(1, 1, 5), T(1, 1, 5)),
     r"itk_odereg\.warp\(\): 'displacement' must have shape \[N, 2, H, W\] \(2D\) or \[N, 3, D, H, W\] \(3D\)"),
    ("4d-spatial", lambda: (T(1, 1, 2, 2, 2, 2), T(1, 4, 2, 2, 2, 2)),
     r"'displacement' must have shape \[N, 2, H, W\]"),
    ("batch-mismatch", lambda: (T(2, 1, 4, 5), T(1, 2, 4, 5)),
     r"itk_odereg\.warp\(\): 'image' and 'displacement' must have the same batch size N"),
    ("spatial-mismatch-2d", lambda: (T(1, 1, 4, 6), T(1, 2, 4, 5)),
     r"itk_odereg\.warp\(\): 'image' and 'displacement' must have the same spatial size"),
    ("spatial-mismatch-3d", lambda: (T(1, 2, 3, 4, 5), T(1, 3, 3, 5, 5)),
     r"'image' and 'displacement' must have the same spatial size"),
    ("mixed-dtype", lambda: (T(1, 1, 4, 5), T(1, 2, 4, 5, dtype=f64)),
     r"itk_odereg\.warp\(\): 'image' \(.*\) and 'displacement' \(.*\) must have the same dtype"),
    ("int-image", lambda: (T(1, 1, 4, 5, dtype=torch.int32), T(1, 2, 4, 5)),
     r"itk_odereg\.warp\(\): 'image' must be float32 or float64"),
    ("int-displacement", lambda: (T(1, 1, 4, 5), T(1, 2, 4, 5, dtype=torch.int64)),
     r"itk_odereg\.warp\(\): 'displacement' must be float32 or float64"),
    ("half", lambda: (T(1, 1, 4, 5).half(), T(1, 2, 4, 5).half()),
     r"'image' must be float32 or float64"),
    ("batch-zero", lambda: (T(0, 1, 4, 5), T(0, 2, 4, 5)),
     r"itk_odereg\.warp\(\): 'displacement' must have batch size N >= 1"),
    ("spatial-zero", lambda: (T(1, 1, 0, 5), T(1, 2, 0, 5)),
     r"itk_odereg\.warp\(\): 'displacement' must have every spatial size >= 1"),
    ("spatial-zero-3d", lambda: (T(1, 1, 3, 4, 0), T(1, 3, 3, 4, 0)),
     r"'displacement' must have every spatial size >= 1"),
    ("channels-zero", lambda: (T(1, 0, 4, 5), T(1, 2, 4, 5)),
     r"itk_odereg\.warp\(\): 'image' must have at least one channel"),
    ("disp-channels-2d", lambda: (T(1, 1, 4, 5), T(1, 3, 4, 5)),
     r"itk_odereg\.warp\(\): 'displacement' must have 2 channels \(one per spatial dimension"),
    ("disp-channels-3d", lambda: (T(1, 1, 3, 4, 5), T(1, 2, 3, 4, 5)),
     r"'displacement' must have 3 channels"),
]

BAD_PADDING = [
    ("reflection", r"itk_odereg\.warp\(\): 'padding' must be \"zeros\" or \"border\", got \"reflection\""),
    ("", r"'padding' must be \"zeros\" or \"border\", got \"\""),
    ("Zeros", r"'padding' must be \"zeros\" or \"border\", got \"Zeros\""),
]

# sample_at shares warp's checks except the spatial sizes: any corner-aligned grid of the box.
SAMPLE_AT_CASES = [
    ("single-sample-image-axis", lambda: (T(1, 1, 1, 5, 5), T(1, 3, 4, 5, 5)),
     r"itk_odereg\.sample_at\(\): spatial dim 0 of 'image' \[1, 1, 1, 5, 5\] and 'displacement' \[1, 3, 4, 5, 5\] "
     r"must be equal, or both at least 2"),
    ("single-sample-displacement-axis", lambda: (T(1, 1, 4, 6), T(1, 2, 4, 1)),
     r"itk_odereg\.sample_at\(\): spatial dim 1 .* must be equal, or both at least 2"),
    ("batch-mismatch", lambda: (T(2, 1, 4, 5), T(1, 2, 7, 8)),
     r"itk_odereg\.sample_at\(\): 'image' and 'displacement' must have the same batch size N"),
    ("rank-mismatch", lambda: (T(1, 1, 4, 5), T(1, 3, 3, 4, 5)),
     r"itk_odereg\.sample_at\(\): 'image' must have shape \[N, C, \*S\] with 3 spatial dims"),
    ("mixed-dtype", lambda: (T(1, 1, 4, 5), T(1, 2, 6, 5, dtype=f64)),
     r"itk_odereg\.sample_at\(\): 'image' \(.*\) and 'displacement' \(.*\) must have the same dtype"),
    ("bad-padding", lambda: (T(1, 1, 4, 5), T(1, 2, 6, 5), "reflection"),
     r"itk_odereg\.sample_at\(\): 'padding' must be \"zeros\" or \"border\""),
]

BSPLINE_CASES = [
    ("grid-mismatch", lambda: (T(1, 2, 5, 5), [8, 8], [3, 3]),
     _esc("itk_odereg.bspline_to_dense(): 'control' has control grid [5, 5] but dense shape [8, 8] "
          "with control_spacing [3, 3] needs [6, 6]")),
    ("grid-mismatch-3d", lambda: (T(1, 3, 5, 5, 6), [6, 7, 8], [3, 4, 5]),
     r"'control' has control grid \[5, 5, 6\] but dense shape \[6, 7, 8\]"),
    ("spacing-zero", lambda: (T(1, 2, 5, 5), [8, 8], [0, 3]),
     _esc("itk_odereg.bspline_to_dense(): 'control_spacing' must be positive integers, got [0, 3]")),
    ("spacing-negative", lambda: (T(1, 2, 5, 5), [8, 8], [3, -1]),
     _esc("'control_spacing' must be positive integers, got [3, -1]")),
    ("spacing-length", lambda: (T(1, 2, 6, 6), [8, 8], [3]),
     _esc("itk_odereg.bspline_to_dense(): 'control_spacing' must have one integer per spatial dim (2)")),
    ("control-rank", lambda: (T(2, 6, 6), [8, 8], [3, 3]),
     _esc("itk_odereg.bspline_to_dense(): 'control' must have shape [N, C, *G] with 2 spatial dims")),
    ("shape-1d", lambda: (T(1, 1, 6), [8], [3]),
     _esc("itk_odereg.bspline_to_dense(): 'shape' must list 2 or 3 spatial sizes")),
    ("int-control", lambda: (T(1, 2, 6, 6, dtype=torch.int32), [8, 8], [3, 3]),
     _esc("itk_odereg.bspline_to_dense(): 'control' must be float32 or float64")),
    ("batch-zero", lambda: (T(0, 2, 6, 6), [8, 8], [3, 3]),
     _esc("itk_odereg.bspline_to_dense(): 'control' must have N >= 1 and C >= 1")),
    ("channels-zero", lambda: (T(1, 0, 6, 6), [8, 8], [3, 3]),
     _esc("'control' must have N >= 1 and C >= 1")),
    ("shape-zero", lambda: (T(1, 1, 4, 6), [0, 8], [3, 3]),
     _esc("itk_odereg.bspline_to_dense(): 'shape' must be positive")),
]

RESAMPLE_CASES = [
    ("1d", lambda: (T(1, 1, 5), [7]),
     _esc("itk_odereg.resample_linear(): 'input' must have shape [N, C, H, W] (2D) or [N, C, D, H, W] (3D)")),
    ("4d-spatial", lambda: (T(1, 1, 2, 2, 2, 2), [3, 3, 3, 3]), _esc("'input' must have shape [N, C, H, W] (2D)")),
    ("shape-length", lambda: (T(1, 3, 4, 5, 6), [8, 8]),
     _esc("itk_odereg.resample_linear(): 'shape' must list one size per spatial dim of 'input' (3), got [8, 8]")),
    ("shape-zero", lambda: (T(1, 1, 4, 5), [0, 8]), _esc("itk_odereg.resample_linear(): 'shape' must be positive")),
    ("shape-negative", lambda: (T(1, 1, 4, 5), [3, -1]), _esc("'shape' must be positive, got [3, -1]")),
    ("int", lambda: (T(1, 1, 4, 5, dtype=torch.int64), [8, 8]),
     _esc("itk_odereg.resample_linear(): 'input' must be float32 or float64")),
    ("half", lambda: (T(1, 1, 4, 5).half(), [8, 8]), _esc("'input' must be float32 or float64")),
    ("batch-zero", lambda: (T(0, 1, 4, 5), [8, 8]), _esc("itk_odereg.resample_linear(): 'input' must have no empty dim")),
    ("channels-zero", lambda: (T(1, 0, 4, 5), [8, 8]), _esc("'input' must have no empty dim")),
    ("spatial-zero", lambda: (T(1, 2, 3, 0, 5), [4, 4, 4]), _esc("'input' must have no empty dim")),
]



def _mlp(cin=3, widths=(8, 3), points=10, dtype=f32):
    """(input, weights, biases) of a valid tanh_mlp call."""
    weights, biases, width = [], [], cin
    for out in widths:
        weights.append(T(out, width, dtype=dtype))
        biases.append(T(out, dtype=dtype))
        width = out
    return T(cin, points, dtype=dtype), weights, biases


def _mlp_with(**change):
    x, weights, biases = _mlp()
    return change.get("x", x), change.get("weights", weights), change.get("biases", biases)


TANH_MLP_CASES = [
    ("input-3d", lambda: _mlp_with(x=T(1, 3, 10)),
     _esc("itk_odereg.tanh_mlp(): 'input' must have shape [channels, points], got [1, 3, 10]")),
    ("input-int", lambda: _mlp_with(x=T(3, 10, dtype=torch.int64)),
     _esc("itk_odereg.tanh_mlp(): 'input' must be float32 or float64")),
    ("no-layers", lambda: _mlp_with(weights=[], biases=[]), _esc("'weights' must hold 1 to 8 layers, got 0")),
    ("too-deep", lambda: _mlp(widths=(2,) * 9), _esc("'weights' must hold 1 to 8 layers, got 9")),
    ("biases-count", lambda: _mlp_with(biases=[T(8)]),
     _esc("itk_odereg.tanh_mlp(): 'biases' must hold one vector per layer of 'weights' (2), got 1")),
    ("input-too-wide", lambda: _mlp(cin=33), _esc("'input' must have 1 to 32 channels, got shape [33, 10]")),
    ("input-no-channels", lambda: _mlp_with(x=T(0, 10)), _esc("'input' must have 1 to 32 channels")),
    ("layer-too-wide", lambda: _mlp(widths=(40, 3)),
     _esc("itk_odereg.tanh_mlp(): 'weights' of layer 0 must have shape [out, 3] with 1 <= out <= 32, got [40, 3]")),
    ("weights-mismatch", lambda: _mlp_with(weights=[T(8, 3), T(3, 7)]),
     _esc("'weights' of layer 1 must have shape [out, 8] with 1 <= out <= 32, got [3, 7]")),
    ("bias-shape", lambda: _mlp_with(biases=[T(8), T(4)]),
     _esc("itk_odereg.tanh_mlp(): 'biases' of layer 1 must have shape [3], got [4]")),
    ("weights-dtype", lambda: _mlp_with(weights=[T(8, 3, dtype=f64), T(3, 8)]),
     r"itk_odereg\.tanh_mlp\(\): 'input' \(.*\) and 'weights' \(.*\) must have the same dtype"),
    ("biases-int", lambda: _mlp_with(biases=[T(8, dtype=torch.int32), T(3)]),
     _esc("itk_odereg.tanh_mlp(): 'biases' must be float32 or float64")),
]

REGULARIZERS = ["diffusion_energy", "bending_energy", "jacobian_determinant", "jacobian_penalty"]
MIN_SIZE = {"diffusion_energy": 2, "bending_energy": 3, "jacobian_determinant": 2, "jacobian_penalty": 2}


def regularizer_cases():
    for name in REGULARIZERS:
        p = _esc(f"itk_odereg.{name}(): ")
        m = MIN_SIZE[name]
        cases = [
            ("rank-1d", lambda: (T(1, 1, 5),), p + r"'displacement' must have shape \[N, 2, H, W\]"),
            ("rank-4d", lambda: (T(1, 4, 3, 3, 3, 3),), p + r"'displacement' must have shape \[N, 2, H, W\]"),
            ("channels-2d", lambda: (T(1, 3, 4, 5),), p + r"'displacement' must have 2 channels"),
            ("channels-3d", lambda: (T(1, 2, 3, 4, 5),), p + r"'displacement' must have 3 channels"),
            ("int", lambda: (T(1, 2, 4, 5, dtype=torch.int64),), p + r"'displacement' must be float32 or float64"),
            ("batch-zero", lambda: (T(0, 2, 4, 5),), p + r"'displacement' must have batch size N >= 1"),
            ("spatial-zero", lambda: (T(1, 2, 0, 5),), p + rf"'displacement' must have every spatial size >= {m}"),
            ("spatial-one", lambda: (T(1, 3, 4, 1, 5),), p + rf"'displacement' must have every spatial size >= {m}"),
        ]
        if name == "bending_energy":
            cases += [
                ("spatial-two-2d", lambda: (T(1, 2, 2, 5),),
                 p + r"'displacement' must have every spatial size >= 3"),
                ("spatial-two-3d", lambda: (T(1, 3, 3, 4, 2),),
                 p + _esc("'displacement' must have every spatial size >= 3, got shape [1, 3, 3, 4, 2]")),
            ]
        if name in ("diffusion_energy", "bending_energy"):
            positive = p + _esc("'spacing' must be finite and positive")
            cases += [
                ("spacing-short", lambda: (T(1, 2, 4, 5), [1.0]),
                 p + _esc("'spacing' must have 2 values (mm per voxel, tensor order)")),
                ("spacing-long", lambda: (T(1, 3, 3, 4, 5), [1.0, 1.0, 1.0, 1.0]),
                 p + _esc("'spacing' must have 3 values")),
                ("spacing-zero", lambda: (T(1, 2, 4, 5), [1.0, 0.0]), positive),
                ("spacing-negative", lambda: (T(1, 2, 4, 5), [-1.0, 1.0]), positive),
                ("spacing-inf", lambda: (T(1, 2, 4, 5), [1.0, float("inf")]), positive),
                ("spacing-nan", lambda: (T(1, 2, 4, 5), [float("nan"), 1.0]), positive),
            ]
        for cid, make, match in cases:
            yield pytest.param(name, make, match, id=f"{name}-{cid}")


# --------------------------------------------------------------------------- calling paths

MODES = ["wrapper", "torch.ops", "fake", "fallback"]
_WRAPPER_MODULE = {
    "warp": "itk_odereg.ops.warp",
    "sample_at": "itk_odereg.ops.warp",
    "bspline_to_dense": "itk_odereg.ops.bspline",
    "resample_linear": "itk_odereg.ops.resample",
    "tanh_mlp": "itk_odereg.ops.tanh_mlp",
    "diffusion_energy": "itk_odereg.ops.regularizers",
    "bending_energy": "itk_odereg.ops.regularizers",
    "jacobian_determinant": "itk_odereg.ops.regularizers",
    "jacobian_penalty": "itk_odereg.ops.regularizers",
}


def call(mode, name, args, monkeypatch):
    if mode == "wrapper":
        return getattr(ops, name)(*args)
    if mode == "torch.ops":
        return getattr(torch.ops.itk_odereg, name).default(*args)
    if mode == "fake":
        with FakeTensorMode() as fake_mode:
            def to_fake(a):
                if isinstance(a, torch.Tensor):
                    return fake_mode.from_tensor(a)
                return [to_fake(t) for t in a] if isinstance(a, list) else a

            fake_args = [to_fake(a) for a in args]
            return getattr(torch.ops.itk_odereg, name).default(*fake_args)
    if mode == "fallback":
        monkeypatch.setattr(sys.modules[_WRAPPER_MODULE[name]], "_HAS_OPS", False)
        return getattr(ops, name)(*args)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cid,make,match", WARP_CASES, ids=[c[0] for c in WARP_CASES])
def test_warp_bad_input(cid, make, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, "warp", make(), monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding,match", BAD_PADDING, ids=[p[0] or "empty" for p in BAD_PADDING])
def test_warp_bad_padding(padding, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, "warp", (T(1, 1, 4, 5), T(1, 2, 4, 5), padding), monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cid,make,match", SAMPLE_AT_CASES, ids=[c[0] for c in SAMPLE_AT_CASES])
def test_sample_at_bad_input(cid, make, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, "sample_at", make(), monkeypatch)


def test_compose_bad_input():
    with pytest.raises(RuntimeError, match=r"'image' and 'displacement' must have the same spatial size"):
        ops.compose(T(1, 2, 4, 5), T(1, 2, 4, 6))
    with pytest.raises(RuntimeError, match=r"'image' \(.*\) and 'displacement' \(.*\) must have the same dtype"):
        ops.compose(T(1, 2, 4, 5), T(1, 2, 4, 5, dtype=f64))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cid,make,match", BSPLINE_CASES, ids=[c[0] for c in BSPLINE_CASES])
def test_bspline_bad_input(cid, make, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, "bspline_to_dense", make(), monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cid,make,match", RESAMPLE_CASES, ids=[c[0] for c in RESAMPLE_CASES])
def test_resample_bad_input(cid, make, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, "resample_linear", make(), monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cid,make,match", TANH_MLP_CASES, ids=[c[0] for c in TANH_MLP_CASES])
def test_tanh_mlp_bad_input(cid, make, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, "tanh_mlp", make(), monkeypatch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,make,match", list(regularizer_cases()))
def test_regularizer_bad_input(name, make, match, mode, monkeypatch):
    with pytest.raises(RuntimeError, match=match):
        call(mode, name, make(), monkeypatch)


def test_bspline_control_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"'shape' \[8, 8\] and 'control_spacing' \[3\] must have the same length"):
        ops.bspline_control_shape((8, 8), (3,))
    with pytest.raises(ValueError, match="must be positive integers"):
        ops.bspline_control_shape((8, 8), (3, -2))


def test_backward_ops_check_their_arguments():
    O = torch.ops.itk_odereg
    g = T(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match=r"_bspline_to_dense_backward\(\): 'control_shape' \[5, 6\] does not match"):
        O._bspline_to_dense_backward(g, [5, 6], [3, 3])
    with pytest.raises(RuntimeError, match=r"_bspline_to_dense_backward\(\): 'control_spacing' must be positive"):
        O._bspline_to_dense_backward(g, [6, 6], [0, 3])
    image, u = T(1, 1, 4, 5), T(1, 2, 4, 5)
    with pytest.raises(RuntimeError, match=r"_warp_backward\(\): 'grad_output' must have the shape of 'image'"):
        O._warp_backward(T(1, 1, 4, 4), image, u, "zeros", True, True)
    with pytest.raises(RuntimeError, match=r"_warp_backward\(\): 'padding' must be"):
        O._warp_backward(T(1, 1, 4, 5), image, u, "wrap", True, True)
    with pytest.raises(RuntimeError, match=r"_sample_at_backward\(\): 'grad_output' must have shape"):
        O._sample_at_backward(T(1, 1, 4, 5), T(1, 1, 3, 3), T(1, 2, 6, 7), "zeros", True, True)
    with pytest.raises(RuntimeError, match=r"_resample_linear_backward\(\): 'shape' must list one size per spatial dim"):
        O._resample_linear_backward(T(1, 2, 8, 8), [5, 6, 7])
    with pytest.raises(RuntimeError, match=r"_resample_linear_backward\(\): 'grad_output' must be float32"):
        O._resample_linear_backward(T(1, 2, 8, 8, dtype=torch.int32), [5, 6])
    x, weights, biases = _mlp()
    with pytest.raises(RuntimeError, match=_esc("_tanh_mlp_backward(): 'grad_output' must have shape [3, 10], got [8, 10]")):
        O._tanh_mlp_backward(T(8, 10), x, weights, biases)
    with pytest.raises(RuntimeError, match=_esc("_tanh_mlp_backward(): 'biases' of layer 1 must have shape [3]")):
        O._tanh_mlp_backward(T(3, 10), x, weights, [biases[0], T(5)])
    with pytest.raises(RuntimeError, match=r"_jacobian_determinant_backward\(\): 'grad_output' must have shape"):
        O._jacobian_determinant_backward(T(1, 4, 4), u)
    with pytest.raises(RuntimeError, match=r"_diffusion_energy_backward\(\): 'grad_output' must be a scalar"):
        O._diffusion_energy_backward(T(2), u, None)


def test_errors_leave_no_partial_state():
    """After a rejected call the ops keep working (no crash, no poisoned state)."""
    for bad in (T(0, 1, 4, 5), T(1, 1, 0, 5)):
        with pytest.raises(RuntimeError):
            ops.warp(bad, torch.zeros(bad.shape[0], 2, *bad.shape[2:]))
    image = T(1, 1, 4, 5)
    assert torch.equal(ops.warp(image, torch.zeros(1, 2, 4, 5)), image)
