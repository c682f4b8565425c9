"""itk_odereg.ops.tanh_mlp against the torch ops it replaces (addmm and tanh per layer):
values, gradients, gradcheck, opcheck, determinism over threads, and its float32 tanh."""
from __future__ import annotations

import pytest
import torch
from conftest import cpu_and_cuda
from torch.autograd import gradcheck

from itk_odereg import ops
from itk_odereg.ops import _reference

# The float32 kernels' tanh is a rational fit (3.2e-7 from the exact value); the rest is
# float rounding of a few dozen multiply-adds per value.
ATOL = {torch.float32: 2e-6, torch.float64: 1e-13}

# (input channels, layer widths, points): NODEO's network (3 -> 8 -> 8 -> 3) on its control
# grid and on the one point of the identity state, a single layer, odd widths, the widest
# layers allowed, and point counts around the kernels' block of 256.
CASES = [(3, (8, 8, 3), 25872), (3, (8, 8, 3), 1), (2, (5,), 300), (1, (32, 7, 32, 2), 513),
         (4, (3, 3, 3, 3, 3, 3, 3, 3), 255), (32, (32,), 257)]


def _network(cin, widths, dtype, device, scale=1.0):
    weights, biases, width = [], [], cin
    for out in widths:
        weights.append(scale * torch.randn(out, width, dtype=dtype, device=device) / width**0.5)
        biases.append(0.5 * torch.randn(out, dtype=dtype, device=device))
        width = out
    return weights, biases


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cin,widths,points", CASES)
def test_tanh_mlp_matches_torch_ops(cin, widths, points, dtype, device):
    x = 2.0 * torch.randn(cin, points, dtype=dtype, device=device)
    weights, biases = _network(cin, widths, dtype, device, scale=2.0)
    out = ops.tanh_mlp(x, weights, biases)
    assert out.shape == (widths[-1], points) and out.dtype == dtype and out.device == x.device
    assert out.abs().max() <= 1.0
    if dtype == torch.float64:
        torch.testing.assert_close(out, _reference.tanh_mlp(x, weights, biases), atol=ATOL[dtype], rtol=0)
        return
    # In float32 both the op and torch's own ops round, and deep networks amplify it: the op
    # must stay within a few times torch's float32 error of the exact (float64) network.
    exact = _reference.tanh_mlp(x.double(), [w.double() for w in weights], [b.double() for b in biases])
    torch_error = (_reference.tanh_mlp(x, weights, biases).double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 5 * torch_error + 1e-6


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cin,widths,points", CASES)
def test_tanh_mlp_gradients_match_torch_ops(cin, widths, points, dtype, device):
    x = torch.randn(cin, points, dtype=dtype, device=device)
    weights, biases = _network(cin, widths, dtype, device)
    g = torch.randn(widths[-1], points, dtype=dtype, device=device)
    leaves = [t.clone().requires_grad_(True) for t in [x, *weights, *biases]]
    layers = len(widths)

    def run(fn):
        inputs = [t.detach().clone().requires_grad_(True) for t in leaves]
        out = fn(inputs[0], inputs[1:1 + layers], inputs[1 + layers:])
        return torch.autograd.grad(out, inputs, g)

    ours = run(ops.tanh_mlp)
    expected = run(_reference.tanh_mlp)
    # Parameter gradients sum over every point: their tolerance grows with the count.
    tol = ATOL[dtype] * max(1.0, points**0.5)
    for name, a, b in zip(["input"] + [f"w{i}" for i in range(layers)] + [f"b{i}" for i in range(layers)],
                          ours, expected):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=tol, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("cin,widths,points", [(3, (4, 2), 37), (2, (3,), 9), (1, (2, 3, 1), 260)])
def test_tanh_mlp_gradcheck(cin, widths, points):
    x = torch.randn(cin, points, dtype=torch.float64, requires_grad=True)
    weights, biases = _network(cin, widths, torch.float64, "cpu")
    params = [t.requires_grad_(True) for t in weights + biases]
    layers = len(widths)
    fn = lambda x, *p: ops.tanh_mlp(x, p[:layers], p[layers:])  # noqa: E731
    assert gradcheck(fn, (x, *params))


def test_tanh_mlp_double_backward_raises():
    x = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    weights, biases = _network(3, (4, 3), torch.float64, "cpu")
    out = ops.tanh_mlp(x, weights, biases)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="_tanh_mlp_backward"):
        grad.sum().backward()


def test_tanh_mlp_opcheck():
    x = torch.randn(3, 300, dtype=torch.float64, requires_grad=True)
    weights, biases = _network(3, (8, 8, 3), torch.float64, "cpu")
    weights = [w.requires_grad_(True) for w in weights]
    biases = [b.requires_grad_(True) for b in biases]
    result = torch.library.opcheck(torch.ops.itk_odereg.tanh_mlp.default, (x, weights, biases))
    assert all(v == "SUCCESS" for v in result.values()), result
    g = torch.randn(3, 300, dtype=torch.float64)
    result = torch.library.opcheck(torch.ops.itk_odereg._tanh_mlp_backward.default,
                                   (g, x.detach(), [w.detach() for w in weights], [b.detach() for b in biases]))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_tanh_mlp_same_bits_for_any_thread_count():
    """Blocks of a fixed size, whatever the thread count, and their parameter-gradient
    shares added in block order: the same bits on 1, 2 and 3 threads."""
    x = torch.randn(3, 25872)
    weights, biases = _network(3, (8, 8, 3), torch.float32, "cpu")
    g = torch.randn(3, 25872)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append([ops.tanh_mlp(x, weights, biases),
                            *torch.ops.itk_odereg._tanh_mlp_backward(g, x, weights, biases)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, results[0]))


def test_tanh_mlp_float_tanh_accuracy():
    """One layer with the identity weight is tanh itself: the float32 fit against tanh in
    double over the whole range, its saturation, odd symmetry and exact zero."""
    x = torch.linspace(-12.0, 12.0, 200001, dtype=torch.float32)
    one = [torch.ones(1, 1)], [torch.zeros(1)]
    t = ops.tanh_mlp(x[None], *one)[0]
    exact = torch.tanh(x.double())
    assert (t.double() - exact).abs().max() < 3.5e-7
    assert t.abs().max() <= 1.0 and t[0] == -1.0 and t[-1] == 1.0
    assert torch.equal(t, -ops.tanh_mlp(-x[None], *one)[0])
    assert ops.tanh_mlp(torch.zeros(1, 1), *one)[0, 0] == 0.0
    tiny = torch.tensor([[1e-30, 1e-8, -3e-5]])
    torch.testing.assert_close(ops.tanh_mlp(tiny, *one), tiny, rtol=2e-7, atol=0)


def test_tanh_mlp_non_contiguous_and_empty():
    x = torch.randn(50, 3, dtype=torch.float64).t()
    assert not x.is_contiguous()
    weights, biases = _network(3, (4, 2), torch.float64, "cpu")
    weights = [weights[0].t().contiguous().t(), weights[1]]
    torch.testing.assert_close(ops.tanh_mlp(x, weights, biases),
                               _reference.tanh_mlp(x.contiguous(), weights, biases), atol=1e-13, rtol=0)
    empty = ops.tanh_mlp(torch.zeros(3, 0, dtype=torch.float64), weights, biases)
    assert empty.shape == (2, 0)
    grads = torch.ops.itk_odereg._tanh_mlp_backward(torch.zeros(2, 0, dtype=torch.float64),
                                                     torch.zeros(3, 0, dtype=torch.float64), weights, biases)
    assert grads[0].shape == (3, 0) and all(torch.equal(g, torch.zeros_like(g)) for g in grads[1:])


def test_tanh_mlp_fallback_matches_kernel():
    x = torch.randn(3, 700, dtype=torch.float64)
    weights, biases = _network(3, (8, 8, 3), torch.float64, "cpu")
    torch.testing.assert_close(_reference.tanh_mlp(x, weights, biases), ops.tanh_mlp(x, weights, biases),
                               atol=1e-13, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")
def test_tanh_mlp_under_torchscript_and_compile():
    weights, biases = _network(3, (8, 3), torch.float64, "cpu")

    def network_energy(x: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, b0: torch.Tensor,
                       b1: torch.Tensor) -> torch.Tensor:
        return torch.ops.itk_odereg.tanh_mlp(x, [w0, w1], [b0, b1]).square().sum()

    x = torch.randn(3, 40, dtype=torch.float64)
    scripted = torch.jit.script(network_energy)
    assert "itk_odereg::tanh_mlp" in str(scripted.graph)
    torch._dynamo.reset()
    compiled = torch.compile(network_energy, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (network_energy, scripted, compiled):
        leaves = [t.clone().requires_grad_(True) for t in (x, *weights, *biases)]
        value = fn(*leaves)
        results.append((value.detach(), torch.autograd.grad(value, leaves)))
    for value, grads in results[1:]:
        torch.testing.assert_close(value, results[0][0], atol=1e-12, rtol=1e-12)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
