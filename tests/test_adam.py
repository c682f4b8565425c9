"""The stages' Adam against torch.optim.Adam: same iterates, with and without AMSGrad."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from itk_odereg.registration.adam import Adam


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_follows_torch_optim(amsgrad):
    torch.manual_seed(0)
    target = torch.randn(5, 4, dtype=torch.float64)
    start = [torch.randn(5, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    opt_ours = Adam([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]], "lr": 0.01}], amsgrad=amsgrad)
    opt_theirs = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.1}, {"params": [theirs[1]], "lr": 0.01}],
                                  amsgrad=amsgrad)
    for step in range(30):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            # a loss whose gradient changes sign and scale, so the AMSGrad maximum matters
            loss = ((params[0] - target) ** 2).sum() * (1 + 0.5 * (-1) ** step) + (params[1] ** 4).sum()
            loss.backward()
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_adam_skips_parameters_without_gradient_and_refuses_bad_rates():
    p, q = torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = Adam.of([p, q], 0.5)
    p.sum().backward()
    opt.step()
    assert torch.equal(q.detach(), torch.ones(2)) and bool((p < 0).all())
    with pytest.raises(ValueError, match="learning rate"):
        Adam.of([p], 0.0)


def test_registration_stages_do_not_import_the_compiler_stack():
    # torch.optim's first optimizer imports torch._dynamo and sympy (~0.8 s of start-up).
    code = ("import sys, torch\n"
            "from itk_odereg.registration.nodeo import NODEOSettings, nodeo_register\n"
            "x = torch.rand(1, 1, 12, 12, 12)\n"
            "nodeo_register(x, x.roll(1, 2), (2.0, 2.0, 2.0), NODEOSettings(levels=(1.0,), iterations=(2,)))\n"
            "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"], out.stdout
