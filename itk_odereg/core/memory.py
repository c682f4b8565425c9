"""Giving the memory of freed blocks back to the operating system between the stages of a registration.

glibc's ``malloc`` keeps freed memory in its heap for later allocations. A registration
allocates its largest temporaries in phases of different shapes (each pyramid level's
autograd graph, the returned map and its inverse, the output images and transforms); the
blocks one phase frees often do not fit the next one's requests, so the resident set grew
phase after phase and the process peaked while writing its outputs, at about 1.6 times what
its largest phase needs (measured on a 2 mm pair: 604 MiB, against 512 MiB with the memory
released between phases; benchmarks/README.md). ``malloc_trim(0)`` hands the free pages back;
it costs a few milliseconds per call here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["release_freed_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the free pages of the C heap to the operating system (glibc ``malloc_trim(0)``).

    Live objects are untouched; only memory already freed is given back. Call it where one
    phase of large temporaries ends and another begins. Returns whether anything was called
    (False where the C library has no ``malloc_trim``).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
