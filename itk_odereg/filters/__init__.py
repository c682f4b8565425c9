"""Toolkit-style front ends of the registration engine.

* :class:`ODERegistrationFilter` / :func:`ode_registration_filter`: ITK (an
  ``itk.PyImageFilter`` that takes part in ITK pipelines).
* :class:`ODERegistrationMethod`: SimpleITK (``Execute(fixed, moving)`` returns a
  ``sitk.Transform``).

All transforms map fixed points to moving points in LPS mm (ITK's convention).
"""
from __future__ import annotations

from .ode_registration import ODERegistrationFilter, ODERegistrationMethod, ode_registration_filter

__all__ = ["ODERegistrationFilter", "ODERegistrationMethod", "ode_registration_filter"]
