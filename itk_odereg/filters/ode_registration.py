"""ITK and SimpleITK front ends of the registration engine (this module re-exports them from
:mod:`.itk_filter` and :mod:`.sitk_method`; their parameters live in :mod:`._parameters`) (:mod:`itk_odereg.registration.engine`).

Three ways into the same engine, each in the idiom of its toolkit:

* :class:`ODERegistrationFilter`: an ITK filter built on ``itk.PyImageFilter``
  (``New()``, ``SetFixedImage``/``SetMovingImage``, ``SetX``/``GetX``,
  ``XOn``/``XOff``, ``Update()``, ``GetOutput()``). It is a real stage of an ITK
  pipeline: ``reader -> ODERegistrationFilter -> itk.MedianImageFilter`` and a
  ``Update()`` of the last filter runs the registration.
* :func:`ode_registration_filter`: its snake_case functional twin, returning
  ``(warped, transform)`` as ``itk.elastix_registration_method`` returns
  ``(image, parameters)``.
* :class:`ODERegistrationMethod`: SimpleITK style, ``Execute(fixed, moving)``
  returns a ``sitk.Transform`` for ``sitk.Resample(moving, fixed, transform)``.

Conventions (``docs/methods.md`` section 3): every transform maps points of the
**fixed** image to points of the **moving** image, in physical LPS millimetres
(ITK's convention), so the resampling filters of ITK and SimpleITK use it
unchanged. The forward transform is the composite ``[affine, warp]`` (the warp
acts first: ``p -> A(W(p))``); the inverse is ``[inverse warp, inverse affine]``
(``q -> W^-1(A^-1(q))``). Displacement fields are vector images on the fixed
grid, components (x, y[, z]) in mm.
"""
from __future__ import annotations

from .itk_filter import ODERegistrationFilter, ode_registration_filter
from .sitk_method import ODERegistrationMethod

__all__ = ["ODERegistrationFilter", "ode_registration_filter", "ODERegistrationMethod"]
