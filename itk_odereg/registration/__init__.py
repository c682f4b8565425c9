"""Registration drivers: affine pre-alignment, NODEO, and the physical-space front end ``register``."""
from __future__ import annotations

from .affine import AffineResult, AffineSettings, affine_register
from .driver import AFFINE_MODES, METHODS, RegistrationResult, register
from .nodeo import NODEOResult, NODEOSettings, nodeo_register

__all__ = [
    "register",
    "RegistrationResult",
    "METHODS",
    "AFFINE_MODES",
    "AffineSettings",
    "AffineResult",
    "affine_register",
    "NODEOSettings",
    "NODEOResult",
    "nodeo_register",
]
