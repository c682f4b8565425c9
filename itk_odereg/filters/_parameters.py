"""The parameters of the ITK and SimpleITK front ends: ``SetX``/``GetX``/``XOn``/``XOff`` generated from the options schema
(:data:`itk_odereg.registration.options.OPTIONS`), as ITK's ``itkSetMacro`` generates them.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..registration.options import OPTIONS, Option, RegistrationOptions


#: The front ends' parameters: every registration option (:data:`OPTIONS`), plus the progress bar.
_PARAMETERS: tuple[Option, ...] = OPTIONS + (
    Option("progress", "Progress", False, lambda value, caller: bool(value),
           "print a progress bar to stderr while registering", boolean=True),
)
_BY_KEY = {option.key: option for option in _PARAMETERS}
# Other spellings accepted by New(**kw) / ode_registration_filter(**kw) / the constructors.
_ALIASES = {option.itk_name: option.key for option in _PARAMETERS}
_ALIASES.update({"NumberOfIterations": "iterations", "number_of_iterations": "iterations", "nodeo_settings": "nodeo",
                 "ProgressBar": "progress", "progress_bar": "progress"})


def _canonical_key(name: str, caller: str) -> str:
    if name in _BY_KEY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    allowed = sorted(set(_BY_KEY) | set(_ALIASES))
    raise TypeError(f"{caller}: unknown parameter '{name}'. Must be one of {allowed}")


class _Parameters:
    """``SetX``/``GetX`` (and ``XOn``/``XOff`` for booleans), generated from the options schema.

    Subclasses set ``self._params`` to a dict of the parameter keys and may override
    :meth:`_modified` (the ITK filter marks itself modified). Every value is checked by its
    option's check when it is set, with the setter's name in the message.
    """

    _params: dict

    def _init_parameters(self, kwargs: dict, caller: str) -> None:
        self._params = {option.key: option.default for option in _PARAMETERS}
        for name, value in kwargs.items():
            self._set(_canonical_key(name, caller), value, caller)

    def _set(self, key: str, value: Any, caller: str | None = None) -> None:
        option = _BY_KEY[key]
        caller = caller or f"{type(self).__name__}.Set{option.itk_name}()"
        value = option.check(value, caller)
        if self._params.get(key, object()) != value or key not in self._params:
            self._params[key] = value
            self._modified()

    def _modified(self) -> None:
        pass

    def _options(self, caller: str) -> RegistrationOptions:
        return RegistrationOptions.create(caller, **{k: v for k, v in self._params.items() if k != "progress"})

    def _settings_lines(self) -> list[str]:
        return [f"{option.itk_name}: {self._params[option.key]!r}" for option in _PARAMETERS]


def _add_accessors(cls: type, options: Sequence[Option]) -> None:
    """``Set<Name>``/``Get<Name>`` (and ``<Name>On``/``<Name>Off``) for every option, as ITK's itkSetMacro does."""
    for option in options:
        def setter(self, value, _key=option.key):
            self._set(_key, value)

        def getter(self, _key=option.key):
            return self._params[_key]

        setter.__name__, getter.__name__ = f"Set{option.itk_name}", f"Get{option.itk_name}"
        setter.__doc__ = f"{option.help[0].upper()}{option.help[1:]} (default {option.default!r})."
        getter.__doc__ = f"The value set by ``Set{option.itk_name}``: {option.help}."
        setattr(cls, setter.__name__, setter)
        setattr(cls, getter.__name__, getter)
        if option.boolean:
            def on(self, _key=option.key):
                self._set(_key, True)

            def off(self, _key=option.key):
                self._set(_key, False)

            on.__name__, off.__name__ = f"{option.itk_name}On", f"{option.itk_name}Off"
            on.__doc__, off.__doc__ = f"Same as ``Set{option.itk_name}(True)``.", f"Same as ``Set{option.itk_name}(False)``."
            setattr(cls, on.__name__, on)
            setattr(cls, off.__name__, off)


_add_accessors(_Parameters, _PARAMETERS)
_Parameters.SetNumberOfIterations = _Parameters.SetIterations
_Parameters.GetNumberOfIterations = _Parameters.GetIterations
