"""Shared pytest helpers for the itk_odereg op tests."""
from __future__ import annotations

import os
import random
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from itk_odereg import extension  # noqa: E402  (after the sys.path fix)

# These tests are about the compiled kernels: without them the wrappers silently
# fall back to the pure-PyTorch references, so fail loudly instead of testing those.
extension._assert_has_ops()

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cpu_and_cuda():
    """Device parameters: always "cpu"; "cuda" only runs where a CUDA device is present."""
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param("cuda", id="cuda", marks=[requires_cuda, pytest.mark.cuda]),
    ]


@pytest.fixture(autouse=True)
def seed():
    """Seed every RNG the tests touch; returns the seed for tests that build generators."""
    random.seed(0)
    torch.manual_seed(0)
    return 0
