"""itk-odereg: neural-ODE deformable image registration for ITK, SimpleITK and ANTs workflows.

Entry points (every transform maps fixed points to moving points, LPS mm, as in ITK):

* :func:`register`: ``register(fixed, moving, **options) -> RegistrationResult`` for
  SimpleITK images, ITK images or file paths;
* :class:`ODERegistrationFilter` / :func:`ode_registration_filter`: an ITK pipeline filter;
* :class:`ODERegistrationMethod`: SimpleITK style, ``Execute(fixed, moving) -> sitk.Transform``;
* :func:`ants_registration`: ``ants.registration``-style dict and ANTs-named transform files;
* the ``itk-odereg`` command line (:mod:`itk_odereg.cli`);
* :mod:`itk_odereg.ops`: the compiled kernels as torch ops; :mod:`itk_odereg.losses`: the similarity losses;
* the engine beneath all of them: :func:`register_images` (tensors on :class:`ImageGrid` s in, a
  toolkit-neutral :class:`Registration` out), its :class:`RegistrationOptions` and its :data:`STAGES`.

The names above are imported on first use (PEP 562 module ``__getattr__``), so
``import itk_odereg`` and the command line's ``--help`` do not import torch;
``itk_odereg.register`` and ``from itk_odereg import register`` work as before.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> (submodule, attribute in it; None for the submodule itself)
_LAZY = {
    "ops": ("ops", None),
    "register": ("registration.driver", "register"),
    "RegistrationResult": ("registration.driver", "RegistrationResult"),
    "ODERegistrationFilter": ("filters", "ODERegistrationFilter"),
    "ODERegistrationMethod": ("filters", "ODERegistrationMethod"),
    "ode_registration_filter": ("filters", "ode_registration_filter"),
    "ants_registration": ("ants_compat", "ants_registration"),
    "qc_figure": ("qc", "qc_figure"),
    "losses": ("losses", None),
    "ImageGrid": ("core.grid", "ImageGrid"),
    "Registration": ("registration.result", "Registration"),
    "RegistrationOptions": ("registration.options", "RegistrationOptions"),
    "register_images": ("registration.engine", "register_images"),
    "STAGES": ("registration.stages", "STAGES"),
}

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
    "losses",
    "ImageGrid",
    "Registration",
    "RegistrationOptions",
    "register_images",
    "STAGES",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import losses, ops
    from .core.grid import ImageGrid
    from .registration.engine import register_images
    from .registration.options import RegistrationOptions
    from .registration.result import Registration
    from .registration.stages import STAGES
    from .ants_compat import ants_registration
    from .filters import ODERegistrationFilter, ODERegistrationMethod, ode_registration_filter
    from .qc import qc_figure
    from .registration.driver import RegistrationResult, register


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value   # cache: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
