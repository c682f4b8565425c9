"""Registration: the stages (affine, NODEO, MS-ODENet), the engine that chains them, its options, and ``register``.

The names below are imported on first use (PEP 562), so that importing one module of
this package (``registration.result``, say) does not import the front end ``register``
and the adapters above it: the layers stay one-way (``docs/architecture.md``).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> submodule that defines it
_LAZY = {
    "register": "driver",
    "RegistrationResult": "driver",
    "METHODS": "driver",
    "AFFINE_MODES": "stages",
    "STAGES": "stages",
    "register_images": "engine",
    "Registration": "result",
    "RegistrationOptions": "options",
    "OPTIONS": "options",
    "AffineSettings": "affine",
    "AffineResult": "affine",
    "affine_register": "affine",
    "NODEOSettings": "nodeo",
    "NODEOResult": "nodeo",
    "nodeo_register": "nodeo",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .affine import AffineResult, AffineSettings, affine_register
    from .driver import METHODS, RegistrationResult, register
    from .engine import register_images
    from .nodeo import NODEOResult, NODEOSettings, nodeo_register
    from .options import OPTIONS, RegistrationOptions
    from .result import Registration
    from .stages import AFFINE_MODES, STAGES


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
