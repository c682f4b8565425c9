"""The ITK front end: :class:`ODERegistrationFilter` (an ``itk.PyImageFilter``) and its functional twin
:func:`ode_registration_filter`. Transforms map fixed points to moving points, LPS mm.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any, Optional

from ..adapters.result import RegistrationResult
from ..core.image import load_image
from ..registration.driver import register_loaded
from ..registration.options import RegistrationOptions

from ._parameters import _PARAMETERS, _Parameters, _canonical_key


# ---------------------------------------------------------------------------- ITK filter


def _itk():
    import itk

    return itk


def _scalar_image_type(image: Any, caller: str, name: str) -> tuple[Any, int]:
    """(itk image type, dimension) of a scalar itk.Image; clear errors for everything else."""
    itk = _itk()
    if not hasattr(image, "GetImageDimension") or not hasattr(image, "GetLargestPossibleRegion"):
        hint = ""
        mod = type(image).__module__ or ""
        if mod.startswith("SimpleITK"):
            hint = " (for SimpleITK images use ODERegistrationMethod)"
        raise TypeError(f"{caller}: '{name}' must be an itk.Image or an ITK filter with GetOutput(), "
                        f"got {type(image).__module__}.{type(image).__name__}{hint}")
    d = int(image.GetImageDimension())
    if d not in (2, 3):
        raise ValueError(f"{caller}: '{name}' is a {d}D image; only 2D and 3D images are supported")
    try:
        pixel, dim = itk.template(image)[1]
    except Exception:  # noqa: BLE001 - not a templated itk.Image
        raise TypeError(f"{caller}: '{name}' must be a scalar itk.Image, got {type(image).__name__}") from None
    if "VectorImage" in type(image).__name__ or int(image.GetNumberOfComponentsPerPixel()) != 1:
        raise ValueError(f"{caller}: '{name}' has {int(image.GetNumberOfComponentsPerPixel())} components per voxel "
                         f"({type(image).__name__}); only scalar images are supported")
    return itk.Image[pixel, dim], d


class _FilterState:
    """What the C++ side reaches through the GenerateData callable: parameters in, result out.

    It holds no reference to the filter's own proxy, so the callable (which the
    C++ filter keeps alive) creates no reference cycle through C++.
    """

    def __init__(self, params: dict, name: str) -> None:
        self.params = params
        self.name = name
        self.result: Optional[RegistrationResult] = None
        self.error: Optional[BaseException] = None
        self.updating_from_python = False  # ODERegistrationFilter.Update() re-raises the error itself


class _OneShotExceptHook:
    """Replaces ``sys.excepthook`` until ``PyErr_Print`` (called by ``itk::PyImageFilter`` on a failed
    callable) reports ``error``, then restores the hook. Instead of the full traceback it prints one
    line, or nothing when ``ODERegistrationFilter.Update()`` is about to re-raise the error anyway."""

    def __init__(self, error: BaseException, label: str, quiet: bool) -> None:
        self.error = error
        self.label = label
        self.quiet = quiet
        self.previous = sys.excepthook

    def __call__(self, etype, value, tb) -> None:
        if sys.excepthook is self:
            sys.excepthook = self.previous
        if value is self.error:
            if not self.quiet:
                sys.stderr.write(f"{self.label}: {etype.__name__}: {value}\n")
            return
        self.previous(etype, value, tb)

    def uninstall(self) -> None:
        if sys.excepthook is self:
            sys.excepthook = self.previous


def _generate_input_requested_region(py_filter: Any) -> None:
    # The superclass copied the output's requested region (fixed grid) to every
    # input; the moving image lives on its own grid, and both are needed whole.
    if py_filter is None:
        return
    for i in range(int(py_filter.GetNumberOfIndexedInputs())):
        image = py_filter.GetInput(i)
        if image is not None:
            image.SetRequestedRegionToLargestPossibleRegion()


class _GenerateData:
    """The callable ``itk::PyImageFilter::GenerateData`` calls with the filter's proxy."""

    def __init__(self, state: _FilterState) -> None:
        self.state = state

    def __call__(self, py_filter: Any) -> None:
        itk = _itk()
        state = self.state
        state.error = None
        try:
            if py_filter is None:
                raise RuntimeError(
                    f"{state.name}: the Python object of this filter was garbage-collected; keep a reference "
                    "to the ODERegistrationFilter while its pipeline is in use"
                )
            fixed = py_filter.GetInput(0)
            moving = py_filter.GetInput(1) if int(py_filter.GetNumberOfIndexedInputs()) > 1 else None
            if fixed is None or moving is None:
                raise ValueError(f"{state.name}: set both images first (SetFixedImage and SetMovingImage)")
            state.result = None
            caller = f"{state.name}.Update()"
            options = RegistrationOptions.create(caller, **{k: v for k, v in state.params.items() if k != "progress"})
            result = register_loaded(load_image(fixed, "fixed", caller), load_image(moving, "moving", caller), options,
                                     progress=_progress_callback(state.params, options, py_filter), caller=caller)
            output = py_filter.GetOutput()
            output.SetBufferedRegion(output.GetLargestPossibleRegion())
            output.Allocate()
            view = itk.array_view_from_image(output)
            view[...] = itk.array_view_from_image(result.warped)
            del view
            state.result = result
            py_filter.UpdateProgress(1.0)
        except BaseException as err:  # noqa: BLE001 - reported through ITK, re-raised by Update()
            state.error = err
            sys.excepthook = _OneShotExceptHook(err, state.name, quiet=state.updating_from_python)
            raise


def _expected_iterations(options: RegistrationOptions) -> int:
    """Iterations the engine will report (affine stages + NODEO levels), for ITK's progress fraction."""
    total = 0
    if options.affine is not None:
        settings = options.affine_stage_settings()
        total += sum(settings.rigid_iterations) if "rigid" in settings.stages else 0
        total += sum(settings.affine_iterations) if "affine" in settings.stages else 0
    if options.method != "none":
        total += sum(options.nodeo_settings().iterations)
    return max(total, 1)


def _progress_callback(params: dict, options: RegistrationOptions, py_filter: Any) -> Any:
    """The progress bar when asked for; otherwise ITK ProgressEvents (e.g. for itk.auto_progress) per iteration."""
    if params["progress"]:
        return True
    total, seen = _expected_iterations(options), [0]

    def progress(record: dict) -> None:
        seen[0] += 1
        py_filter.UpdateProgress(min(0.999, seen[0] / total))
    return progress


class ODERegistrationFilter(_Parameters):
    """NODEO registration as an ITK image filter (``itk.PyImageFilter`` with two inputs).

    Input 0 is the fixed image, input 1 the moving image (any grid: size,
    spacing, origin, direction may differ). The output is the moving image
    resampled onto the fixed grid (linear, ``itk.Image[itk.F, d]``). The
    transforms and fields of the last run are available after ``Update()``
    (the getters update the filter first if needed).

    The object wraps an ``itk.PyImageFilter[itk.Image[itk.F, d], itk.Image[itk.F, d]]``
    (``GetITKFilter()``); every method of it not defined here (``AddObserver``,
    ``GetMTime``, ``UpdateLargestPossibleRegion``, ...) is forwarded to it, and
    ITK functions that take a filter (``itk.MedianImageFilter.New(f)``,
    ``itk.imwrite(f, ...)``) use ``GetOutput()``. Inputs of another scalar pixel
    type are cast to float inside the pipeline.

    Pipeline notes:

    * ``itk::PyImageFilter`` reaches its Python callable through a pointer to
      the Python object that its Python ``Update()`` registers, so a pipeline
      updated from *downstream* (``median.Update()``) before this filter's own
      first ``Update()`` would crash. ``New()`` registers it at once, so any
      stage of the pipeline can be updated first.
    * The C++ filter only lives while this object does (ITK's own rule: keep a
      reference to every filter of a pipeline you update later).
    * ``itk::ImageToImageFilter`` normally requires all inputs to share one
      physical space; this filter turns that check off (its coordinate and
      direction tolerances are set to infinity) and requests each input whole.
    * A failed registration raises the original exception from ``Update()``; from a
      downstream ``Update()`` ITK raises ``RuntimeError("... error executing the
      CommandCallable")`` after a one-line message on stderr.

    Example:
        >>> reader = itk.ImageFileReader.New(FileName="fixed.nii.gz")
        >>> reg = ODERegistrationFilter.New(reader, moving_image, Metric="lncc", Iterations=(100, 50))
        >>> median = itk.MedianImageFilter.New(reg, Radius=1)
        >>> median.Update()                      # runs the registration
        >>> transform = reg.GetTransform()       # itk.CompositeTransform[itk.D, 3], fixed -> moving

    Parameters (``SetX``/``GetX``): Metric, Affine, Device, Iterations
    (alias NumberOfIterations), Steps, Seed, ResolutionMM, ProgressBar
    (``ProgressBarOn``/``ProgressBarOff``, also ``ProgressOn``/``ProgressOff``),
    NODEOSettings, AffineSettings. ``GetProgress()`` is ITK's fraction done
    (updated every iteration: ``ProgressEvent`` observers and
    ``itk.auto_progress`` work while the progress bar is off).
    """

    def __init__(self, *, dimension: int = 3, _token: object = None) -> None:
        if _token is not _NEW_TOKEN:
            raise TypeError("ODERegistrationFilter: create it with ODERegistrationFilter.New(...) (ITK style)")
        if dimension not in (2, 3):
            raise ValueError(f"ODERegistrationFilter.New(): 'dimension' must be 2 or 3, got {dimension!r}")
        itk = _itk()
        object.__setattr__(self, "_filter", None)
        self._init_parameters({}, "ODERegistrationFilter.New()")
        self._dimension = dimension
        self._image_type = itk.Image[itk.F, dimension]
        self._state = _FilterState(self._params, "ODERegistrationFilter")
        self._casts: dict[int, Any] = {}
        py_filter = itk.PyImageFilter[self._image_type, self._image_type].New()
        py_filter.SetPyGenerateData(_GenerateData(self._state))
        py_filter.SetPyGenerateInputRequestedRegion(_generate_input_requested_region)
        # Fixed and moving images live on different grids.
        py_filter.SetCoordinateTolerance(float("inf"))
        py_filter.SetDirectionTolerance(float("inf"))
        # What the first Python Update() would do: give C++ the pointer to this
        # proxy, so an update started downstream finds its callable's argument.
        py_filter._SetSelf(py_filter)
        self._filter = py_filter
        # If the proxy ever dies before the C++ object, C++ must not keep a dangling pointer
        # (not at interpreter exit, when ITK may already be gone).
        weakref.finalize(self, py_filter._SetSelf, None).atexit = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def New(cls, *inputs: Any, dimension: Optional[int] = None, **parameters: Any) -> "ODERegistrationFilter":
        """Create the filter (ITK style).

        Args:
            *inputs: optional fixed image, then moving image (``itk.Image`` or a
                filter whose ``GetOutput()`` is one).
            dimension: 2 or 3; default the fixed image's dimension, else 3.
            **parameters: ``Metric="mi"``, ``Iterations=(100, 50)``, ... (ITK names)
                or their snake_case names (``resolution_mm=None``).

        Returns:
            ODERegistrationFilter.

        Raises:
            TypeError, ValueError: bad inputs or parameters, naming them.
        """
        caller = f"{cls.__name__}.New()"
        if len(inputs) > 2:
            raise TypeError(f"{caller}: takes at most 2 inputs (fixed, moving), got {len(inputs)}")
        itk = _itk()
        if dimension is None:
            dimension = _scalar_image_type(itk.output(inputs[0]), caller, "fixed")[1] if inputs else 3
        self = cls(dimension=dimension, _token=_NEW_TOKEN)
        for key, value in parameters.items():
            self._set(_canonical_key(key, caller), value, caller)
        if len(inputs) >= 1:
            self.SetFixedImage(inputs[0])
        if len(inputs) == 2:
            self.SetMovingImage(inputs[1])
        return self

    # ------------------------------------------------------------------ forwarding

    def __getattr__(self, name: str) -> Any:
        py_filter = self.__dict__.get("_filter")
        if py_filter is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(py_filter, name)

    def _modified(self) -> None:
        py_filter = self.__dict__.get("_filter")
        if py_filter is not None:
            py_filter.Modified()

    def GetITKFilter(self) -> Any:
        """The underlying ``itk.PyImageFilter`` (a process object of the pipeline)."""
        return self._filter

    GetPointer = GetITKFilter

    # ITK's ProcessObject::GetProgress() is the fraction done (ProgressEvent observers
    # read it), so the progress-bar switch is called ProgressBar here.
    def SetProgressBar(self, progress_bar: bool) -> None:
        """Print a progress bar to stderr while registering (then no ITK ProgressEvents are sent)."""
        self._set("progress", progress_bar, f"{type(self).__name__}.SetProgressBar()")

    def GetProgressBar(self) -> bool:
        """Whether a progress bar is printed."""
        return self._params["progress"]

    def ProgressBarOn(self) -> None:
        """Same as ``SetProgressBar(True)``."""
        self.SetProgressBar(True)

    def ProgressBarOff(self) -> None:
        """Same as ``SetProgressBar(False)``."""
        self.SetProgressBar(False)

    def SetProgress(self, progress: bool) -> None:
        """Same as :meth:`SetProgressBar` (``ProgressOn``/``ProgressOff`` too); ``GetProgress`` is ITK's."""
        self.SetProgressBar(progress)

    def GetProgress(self) -> float:
        """ITK's progress of the running or last update, in [0, 1] (not the progress-bar switch: :meth:`GetProgressBar`)."""
        return float(self._filter.GetProgress())

    # ------------------------------------------------------------------ inputs and output

    def _connect(self, index: int, image: Any, name: str) -> None:
        itk = _itk()
        caller = f"{type(self).__name__}.Set{name.capitalize()}Image()"
        image = itk.output(image)
        image_type, d = _scalar_image_type(image, caller, name)
        if d != self._dimension:
            raise ValueError(f"{caller}: '{name}' is {d}D but this filter was created for {self._dimension}D images "
                             f"(use {type(self).__name__}.New(dimension={d}) or New(fixed, moving))")
        if image_type != self._image_type:
            cast = itk.CastImageFilter[image_type, self._image_type].New()
            cast.SetInput(image)
            self._casts[index] = cast
            image = cast.GetOutput()
        else:
            self._casts.pop(index, None)
        self._filter.SetInput(index, image)

    def SetFixedImage(self, image: Any) -> None:
        """The reference image (input 0): a scalar ``itk.Image`` (2D/3D) or a filter producing one."""
        self._connect(0, image, "fixed")

    def SetMovingImage(self, image: Any) -> None:
        """The image to align (input 1), on any grid: a scalar ``itk.Image`` or a filter producing one."""
        self._connect(1, image, "moving")

    def GetFixedImage(self) -> Any:
        """Input 0 as the filter sees it (float)."""
        return self._filter.GetInput(0)

    def GetMovingImage(self) -> Any:
        """Input 1 as the filter sees it (float)."""
        return self._filter.GetInput(1) if int(self._filter.GetNumberOfIndexedInputs()) > 1 else None

    def SetInput(self, *args: Any) -> None:
        """``SetInput(image)`` sets the fixed image, ``SetInput(i, image)`` input ``i`` (0 fixed, 1 moving)."""
        if len(args) == 1:
            self.SetFixedImage(args[0])
        elif len(args) == 2 and args[0] in (0, 1):
            self._connect(int(args[0]), args[1], "fixed" if args[0] == 0 else "moving")
        else:
            raise TypeError(f"{type(self).__name__}.SetInput(): expected (image) or (index 0|1, image), "
                            f"got {len(args)} arguments")

    def GetOutput(self) -> Any:
        """The warped moving image on the fixed grid (``itk.Image[itk.F, d]``; filled by ``Update()``)."""
        return self._filter.GetOutput()

    def Update(self) -> None:
        """Run the pipeline up to this filter (the registration, if inputs or parameters changed).

        Raises:
            The exception the registration raised (ValueError for bad images, RuntimeError
            for an unavailable device, ...), not ITK's generic wrapper of it.
        """
        state = self._state
        state.error = None
        state.updating_from_python = True
        try:
            self._filter.Update()
        except RuntimeError:
            error = state.error
            if error is not None:
                state.error = None
                raise error from None
            raise
        finally:
            state.updating_from_python = False
            if isinstance(sys.excepthook, _OneShotExceptHook):
                sys.excepthook.uninstall()

    # ------------------------------------------------------------------ results

    def GetResult(self) -> RegistrationResult:
        """The full :class:`RegistrationResult` of the last run (ITK types); updates first if needed."""
        self.Update()
        if self._state.result is None:  # pragma: no cover - Update() raises instead
            raise RuntimeError(f"{type(self).__name__}: no registration result (did Update() fail?)")
        return self._state.result

    def GetTransform(self) -> Any:
        """``itk.CompositeTransform[itk.D, d]`` ``[affine, displacement]``: fixed points -> moving points (LPS mm).

        Works unchanged in ``itk.resample_image_filter(moving, transform=..., use_reference_image=True,
        reference_image=fixed)``.
        """
        return self.GetResult().transform

    def GetInverseTransform(self) -> Any:
        """``itk.CompositeTransform[itk.D, d]``: moving points -> fixed points (inverse warp after inverse affine)."""
        return self.GetResult().inverse_transform

    def GetDisplacementField(self) -> Any:
        """``itk.Image[itk.Vector[itk.D, d], d]`` on the fixed grid: ``T(p) - p`` in mm (x, y[, z]), affine included."""
        return self.GetResult().displacement_field

    def GetInverseDisplacementField(self) -> Any:
        """``itk.Image[itk.Vector[itk.D, d], d]``: the deformable part's inverse displacement, mm."""
        return self.GetResult().inverse_displacement_field

    def GetJacobianDeterminant(self) -> Any:
        """``itk.Image`` on the fixed grid: det(I + Du) of the deformable part.

        The affine's determinant is the constant ``GetResult().affine_determinant``.
        """
        return self.GetResult().jacobian_determinant

    # ------------------------------------------------------------------ printing

    def _settings_lines(self) -> list[str]:
        return [line.replace("Progress:", "ProgressBar:", 1) for line in super()._settings_lines()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dimension={self._dimension}, " + ", ".join(
            f"{'ProgressBar' if option.key == 'progress' else option.itk_name}={self._params[option.key]!r}"
            for option in _PARAMETERS
        ) + ")"

    def __str__(self) -> str:
        lines = [f"{type(self).__name__} (itk.PyImageFilter, {self._dimension}D, float)"]
        lines += ["  " + line for line in self._settings_lines()]
        lines.append(f"  Updated: {self._state.result is not None}")
        return "\n".join(lines)

    PrintSelf = __str__


_NEW_TOKEN = object()


def ode_registration_filter(fixed: Any, moving: Any, **parameters: Any) -> tuple[Any, Any]:
    """Functional twin of :class:`ODERegistrationFilter` (like ``itk.elastix_registration_method``).

    Args:
        fixed: scalar ``itk.Image`` (2D/3D), or a filter producing one.
        moving: scalar ``itk.Image`` on any grid.
        **parameters: snake_case parameters: ``metric``, ``affine``, ``device``,
            ``iterations``, ``steps``, ``seed``, ``resolution_mm``, ``progress``,
            ``nodeo`` (or ``nodeo_settings``), ``affine_settings``, ``method``, ``model`` (ITK names are
            accepted too; :data:`itk_odereg.registration.options.OPTIONS`).

    Returns:
        ``(warped, transform)``: the moving image on the fixed grid
        (``itk.Image[itk.F, d]``) and the ``itk.CompositeTransform[itk.D, d]``
        mapping fixed points to moving points (LPS mm). ``(image, transform)``
        mirrors ``itk.elastix_registration_method``'s ``(image, parameters)``;
        use :class:`ODERegistrationFilter` for the inverse and the fields.

    Raises:
        TypeError, ValueError: bad images or parameters.
        RuntimeError: ``device="cuda"`` without a CUDA device.
    """
    reg = ODERegistrationFilter.New(fixed, moving, **parameters)
    reg.Update()
    return reg.GetOutput(), reg.GetTransform()
