"""itk-odereg: neural-ODE deformable image registration for ITK, SimpleITK and ANTs workflows.

Entry points (every transform maps fixed points to moving points, LPS mm, as in ITK):

* :func:`register`: ``register(fixed, moving, **options) -> RegistrationResult`` for
  SimpleITK images, ITK images or file paths;
* :class:`ODERegistrationFilter` / :func:`ode_registration_filter`: an ITK pipeline filter;
* :class:`ODERegistrationMethod`: SimpleITK style, ``Execute(fixed, moving) -> sitk.Transform``;
* :func:`ants_registration`: ``ants.registration``-style dict and ANTs-named transform files;
* the ``itk-odereg`` command line (:mod:`itk_odereg.cli`);
* :mod:`itk_odereg.ops`: the compiled kernels as torch ops.
"""
from __future__ import annotations

from . import ops
from ._version import __version__
from .ants_compat import ants_registration
from .filters import ODERegistrationFilter, ODERegistrationMethod, ode_registration_filter
from .qc import qc_figure
from .registration.driver import RegistrationResult, register

__all__ = [
    "ops",
    "__version__",
    "register",
    "RegistrationResult",
    "ODERegistrationFilter",
    "ODERegistrationMethod",
    "ode_registration_filter",
    "ants_registration",
    "qc_figure",
]
