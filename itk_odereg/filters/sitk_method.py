"""The SimpleITK front end: :class:`ODERegistrationMethod`, ``Execute(fixed, moving) -> sitk.Transform``
(fixed points to moving points, LPS mm, for ``sitk.Resample(moving, fixed, transform)``).
"""
from __future__ import annotations

from typing import Any, Optional

from ..adapters.result import RegistrationResult
from ..core.image import load_image
from ..registration.driver import register_loaded

from ._parameters import _PARAMETERS, _Parameters


# ---------------------------------------------------------------------------- SimpleITK method


class ODERegistrationMethod(_Parameters):
    """NODEO registration in SimpleITK style: ``Execute(fixed, moving) -> sitk.Transform``.

    The transform maps fixed points to moving points (LPS mm), so
    ``sitk.Resample(moving, fixed, transform)`` brings the moving image onto the
    fixed grid, as with ``sitk.ImageRegistrationMethod``.

    Example:
        >>> method = ODERegistrationMethod()
        >>> method.SetMetric("mi")
        >>> method.SetNumberOfIterations((100, 50))
        >>> tx = method.Execute(fixed, moving)
        >>> warped = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0)

    Args:
        **parameters: optional initial values by snake_case or SimpleITK name
            (``metric="mi"``, ``NumberOfIterations=(100, 50)``).
    """

    def __init__(self, **parameters: Any) -> None:
        self._init_parameters(parameters, f"{type(self).__name__}()")
        self._result: Optional[RegistrationResult] = None

    def Execute(self, fixed: Any, moving: Any) -> Any:
        """Register ``moving`` to ``fixed``.

        Args:
            fixed: ``SimpleITK.Image`` (2D/3D scalar) or an image file path.
            moving: ``SimpleITK.Image`` or path, on any grid.

        Returns:
            ``sitk.CompositeTransform`` ``[affine, displacement field]``, fixed -> moving.

        Raises:
            TypeError: for inputs that are not SimpleITK images or paths.
            ValueError: bad images (dimension, vector pixels, constant, ...).
            RuntimeError: ``device="cuda"`` without a CUDA device.
        """
        import os

        import SimpleITK as sitk

        caller = f"{type(self).__name__}.Execute()"
        for name, image in (("fixed", fixed), ("moving", moving)):
            if not isinstance(image, (sitk.Image, str, os.PathLike)):
                is_itk = (type(image).__module__ or "").startswith("itk")
                hint = " (for itk images use ODERegistrationFilter)" if is_itk else ""
                raise TypeError(f"{caller}: '{name}' must be a SimpleITK.Image or a file path, "
                                f"got {type(image).__module__}.{type(image).__name__}{hint}")
        self._result = None
        options = self._options(caller)
        self._result = register_loaded(load_image(fixed, "fixed", caller), load_image(moving, "moving", caller),
                                       options, progress=self._params["progress"], caller=caller)
        return self._result.transform

    def _require(self, what: str) -> RegistrationResult:
        if self._result is None:
            raise RuntimeError(f"{type(self).__name__}.{what}(): call Execute(fixed, moving) first")
        return self._result

    def GetResult(self) -> RegistrationResult:
        """The :class:`RegistrationResult` of the last ``Execute`` (SimpleITK types)."""
        return self._require("GetResult")

    def GetTransform(self) -> Any:
        """The forward transform of the last ``Execute`` (fixed -> moving)."""
        return self._require("GetTransform").transform

    def GetInverseTransform(self) -> Any:
        """``sitk.CompositeTransform`` moving -> fixed points.

        ``sitk.Resample(fixed, moving, inverse)`` brings the fixed image onto the moving grid.
        """
        return self._require("GetInverseTransform").inverse_transform

    def GetDisplacementField(self) -> Any:
        """``sitkVectorFloat64`` image on the fixed grid: ``T(p) - p`` in mm (x, y[, z]), affine included."""
        return self._require("GetDisplacementField").displacement_field

    def GetInverseDisplacementField(self) -> Any:
        """``sitkVectorFloat64`` image: the deformable part's inverse displacement in mm."""
        return self._require("GetInverseDisplacementField").inverse_displacement_field

    def GetJacobianDeterminant(self) -> Any:
        """det(I + Du) of the deformable part on the fixed grid (SimpleITK image)."""
        return self._require("GetJacobianDeterminant").jacobian_determinant

    def GetWarpedImage(self) -> Any:
        """The moving image resampled onto the fixed grid by the engine (linear)."""
        return self._require("GetWarpedImage").warped

    def GetName(self) -> str:
        """``"ODERegistrationMethod"`` (SimpleITK's ``GetName``)."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(
            f"{option.key}={self._params[option.key]!r}" for option in _PARAMETERS
        ) + ")"

    def __str__(self) -> str:
        lines = [f"itk_odereg::{type(self).__name__}"]
        lines += ["  " + line for line in self._settings_lines()]
        lines.append(f"  Executed: {self._result is not None}")
        return "\n".join(lines)
