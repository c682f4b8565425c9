"""core/memory.py: freed heap memory handed back to the operating system between stages."""
from __future__ import annotations

import gc
import os
import platform

from itk_odereg.core.memory import release_freed_memory


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_release_freed_memory_gives_freed_heap_pages_back():
    """After many small blocks are freed (they stay in glibc's heap, the resident set unchanged),
    release_freed_memory() returns their pages: the resident set falls by most of their size.
    Where the C library has no malloc_trim it does nothing and says so."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert release_freed_memory() is False
        return
    # 64 KiB blocks: below glibc's mmap threshold, so they live in the heap; the last one stays
    # alive and keeps the heap's top from shrinking on its own.
    blocks = [bytearray(b"x" * (64 << 10)) for _ in range(1600)]   # 100 MiB, written: resident
    keep = blocks[-1]
    del blocks
    gc.collect()
    before = _resident_mib()
    assert release_freed_memory() is True
    after = _resident_mib()
    assert before - after > 50, (before, after)
    assert len(keep) == 64 << 10
