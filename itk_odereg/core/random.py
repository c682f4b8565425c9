"""Seeding that leaves the caller's random number generator alone.

The stages draw random numbers from torch's global generator (the initial weights of NODEO's
state network, through ``torch.nn`` initializers). :func:`seeded` runs them on a fork of that
generator: the caller's generator state is the same after a registration as before it, and a
given seed gives the same draws whatever the caller drew before. ``seed=None`` means a fresh
seed from the operating system's entropy (:func:`fresh_seed`), so two unseeded runs differ, as
"not seeded" promises.
"""
from __future__ import annotations

import contextlib
import secrets
from typing import Iterator, Optional

import torch

__all__ = ["seeded", "fresh_seed"]


def fresh_seed() -> int:
    """A new seed (0 <= seed < 2**63) from the operating system's entropy."""
    return secrets.randbits(63)


@contextlib.contextmanager
def seeded(seed: Optional[int], device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block on a fork of torch's generators, seeded with ``seed`` (None: :func:`fresh_seed`).

    The CPU generator, and that of ``device`` when it is a CUDA device, are restored on exit.
    Yields the seed used.
    """
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    value = fresh_seed() if seed is None else int(seed)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(value)
        yield value
