"""The torch device of a run, checked once with an error that names the caller."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["resolve_device"]


def resolve_device(device: Any, caller: str = "register()") -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:1", a torch.device or None for the CPU) as a checked torch.device.

    Raises:
        ValueError: a device name torch does not know, or a device type other than CPU and CUDA.
        RuntimeError: CUDA requested where ``torch.cuda.is_available()`` is False.
    """
    try:
        resolved = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise ValueError(f"{caller}: 'device' must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"{caller}: 'device' must be 'cpu' or 'cuda', got '{resolved}'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{caller}: device '{resolved}' was requested but torch.cuda.is_available() is False "
            "(no CUDA device, or a CPU-only torch). Use device='cpu'."
        )
    return resolved
