"""Loading of the native op library ``itk_odereg._C``.

``_HAS_OPS`` tells whether the compiled ops are available. Without them the
Python wrappers in :mod:`itk_odereg.ops` fall back to the pure-PyTorch
references (slower, same results), and :func:`_assert_has_ops` explains how
to build the library.
"""
from __future__ import annotations

import importlib.machinery
import os

__all__ = ["library_path", "has_ops"]

import warnings

# torch must be loaded first: _C links against libc10/libtorch, which the
# dynamic loader only finds once torch has loaded them into the process.
import torch  # noqa: F401

_LOAD_ERROR: Exception | None = None
try:
    from itk_odereg import _C  # noqa: F401  (runs the TORCH_LIBRARY registrars)

    _HAS_OPS = True
except (ImportError, OSError) as error:  # not built, or built against another torch
    _HAS_OPS = False
    _LOAD_ERROR = error
    warnings.warn(
        f"itk_odereg: the compiled ops could not be loaded ({error}); falling back to the slower "
        "pure-PyTorch references. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_ops() -> bool:
    """Whether the compiled ``itk_odereg`` torch ops are loaded."""
    return _HAS_OPS


def _assert_has_ops() -> None:
    if not _HAS_OPS:
        raise RuntimeError(
            "itk_odereg: the compiled op library itk_odereg._C could not be loaded "
            f"({_LOAD_ERROR}). Build it with `pip install --no-build-isolation -e .` "
            "after `pip install torch==2.13.0`, against the torch you run."
        )


def library_path() -> str:
    """Absolute path of the shared library that registers the ``itk_odereg`` ops.

    A process can load the ops without importing this package, e.g. to run an
    exported TorchScript model::

        torch.ops.load_library(path)

    Raises:
        RuntimeError: if the library was not built.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(here, "_C" + suffix)
        if os.path.exists(candidate):
            return candidate
    _assert_has_ops()
    raise RuntimeError(f"itk_odereg: _C is importable but no _C library file was found in {here}")
