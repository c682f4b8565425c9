"""The options of a registration: one schema, validated once, shared by every front end.

:data:`OPTIONS` lists every option with its keyword name, its ITK/SimpleITK name, its
default, its check and its help text. :func:`register`, the ITK filter and the SimpleITK
method (their ``SetX``/``GetX``/``XOn``/``XOff`` are generated from it),
``ants_registration`` and the CLI (its choices come from the same registries) all go
through :meth:`RegistrationOptions.create`, so an option is checked by the same rule
with the same message everywhere, labelled with the caller's name.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from ..losses import METRICS
from .affine import AffineSettings
from .nodeo import NODEOSettings
from .stages import AFFINE_MODES, DEFORMABLE_STAGES

__all__ = ["Option", "OPTIONS", "RegistrationOptions"]


# ---------------------------------------------------------------------------- checks


def _choice(name: str, choices: Callable[[], Any]) -> Callable[[Any, str], Any]:
    def check(value: Any, caller: str) -> Any:
        allowed = list(choices())
        if value not in allowed:
            raise ValueError(f'{caller}: invalid {name} "{value}". Must be one of {allowed}')
        return value
    return check


def _check_model(value: Any, caller: str) -> str:
    from ..msodenet.pretrained import MODELS, is_model_name

    value = str(value)
    if not is_model_name(value):
        raise ValueError(f'{caller}: invalid model "{value}". Must be one of {list(MODELS)} '
                         "or the path of a .pt file written by `itk-odereg train`")
    return value


def _check_affine(value: Any, caller: str) -> Optional[str]:
    if value is False or (isinstance(value, str) and value.lower() == "none"):
        value = None
    if value not in AFFINE_MODES:
        raise ValueError(f'{caller}: invalid affine "{value}". Must be one of {list(AFFINE_MODES)} (or "none")')
    return value


def _check_device(value: Any, caller: str) -> str:
    text = "cpu" if value is None else str(value)
    if not (text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ValueError(f"{caller}: 'device' must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return text


def _check_iterations(value: Any, caller: str) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{caller}: 'iterations' must be a sequence of integers (one per pyramid level, coarse to "
                        f"fine), got {value!r}") from None
    if not out or any(v < 0 for v in out) or any(int(v) != v for v in value):
        raise ValueError(f"{caller}: 'iterations' must be non-negative integers, one per pyramid level "
                         f"(coarse to fine, at most 3 with the default levels), got {list(value)!r}")
    if not any(out):
        # ANTs' 0 at a level skips it; 0 at every level would return an identity warp as if registered
        raise ValueError(f"{caller}: 'iterations' {list(out)!r} leaves every level without iterations (the warp "
                         "would be the identity): give at least one level iterations, or use method='none' "
                         "(--method none) for the affine alone")
    return out


def _check_steps(value: Any, caller: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{caller}: 'steps' must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(value: Any, caller: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{caller}: 'seed' must be an integer or None, got {value!r}")
    return int(value)


def _check_resolution(value: Any, caller: str):
    if value is None:
        return None
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{caller}: 'resolution_mm' must be a number (mm), 'auto' or None, got {value!r}")
        return value
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{caller}: 'resolution_mm' must be a number (mm), 'auto' or None, got {value!r}") from None
    if not out > 0:
        raise ValueError(f"{caller}: 'resolution_mm' must be positive (mm), 'auto' or None, got {value!r}")
    return out


def _check_flag(name: str) -> Callable[[Any, str], bool]:
    def check(value: Any, caller: str) -> bool:
        if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
            raise TypeError(f"{caller}: '{name}' must be True or False, got {value!r}")
        return bool(value)
    return check


def _instance_of(cls: type, name: str) -> Callable[[Any, str], Any]:
    def check(value: Any, caller: str) -> Any:
        if value is not None and not isinstance(value, cls):
            raise TypeError(f"{caller}: '{name}' must be a {cls.__name__} or None, got {type(value).__name__}")
        return value
    return check


# ---------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Option:
    """One registration option.

    Attributes:
        key: keyword name (``register(..., key=value)``).
        itk_name: CamelCase name of the ``Set``/``Get`` methods (``SetResolutionMM``).
        default: the value when not given.
        check: ``check(value, caller) -> value``, raising a ValueError/TypeError that names the option.
        help: one line, with units.
        boolean: the ITK front ends also get ``XOn``/``XOff``.
    """

    key: str
    itk_name: str
    default: Any
    check: Callable[[Any, str], Any]
    help: str
    boolean: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("method", "Method", "nodeo", _choice("method", lambda: DEFORMABLE_STAGES),
           "deformable stage: " + ", ".join(DEFORMABLE_STAGES) + " (stages.DEFORMABLE_STAGES)"),
    Option("model", "Model", "bspline", _check_model,
           "MS-ODENet model of the msodenet methods: a shipped name or a .pt file from `itk-odereg train`"),
    Option("metric", "Metric", "lncc", _choice("metric", lambda: METRICS),
           "similarity: lncc (same contrast), mse, ngf (different contrasts), mi"),
    Option("affine", "Affine", "affine", _check_affine,
           "pre-alignment: affine (centres of mass, rigid, affine), rigid, or None"),
    Option("device", "Device", "cpu", _check_device, "torch device: cpu, cuda or cuda:N"),
    Option("iterations", "Iterations", None, _check_iterations,
           "NODEO iterations per pyramid level, coarse to fine (None: NODEOSettings.iterations)"),
    Option("steps", "Steps", 4, _check_steps, "Euler steps on t in [0, 1] while NODEO optimizes"),
    Option("seed", "Seed", 0, _check_seed,
           "random seed of the stages (None: a fresh one each run, recorded in the result's 'seed')"),
    Option("reproducible", "Reproducible", False, _check_flag("reproducible"),
           "run the stages on one thread, so that a seed gives bit-identical outputs at any thread count "
           "(slower; docs/methods.md section 'Reproducibility')", boolean=True),
    Option("resolution_mm", "ResolutionMM", "auto", _check_resolution,
           "working grid spacing in mm; 'auto' follows the fixed image; None: the fixed grid"),
    Option("nodeo", "NODEOSettings", None, _instance_of(NODEOSettings, "nodeo"),
           "full NODEOSettings (override metric, iterations, steps and seed)"),
    Option("affine_settings", "AffineSettings", None, _instance_of(AffineSettings, "affine_settings"),
           "full AffineSettings of the pre-alignment"),
)

_BY_KEY = {option.key: option for option in OPTIONS}


@dataclass(frozen=True)
class RegistrationOptions:
    """Checked options of one registration (see :data:`OPTIONS` for each field's meaning and default)."""

    method: str = "nodeo"
    model: str = "bspline"
    metric: str = "lncc"
    affine: Optional[str] = "affine"
    device: str = "cpu"
    iterations: Optional[tuple[int, ...]] = None
    steps: int = 4
    seed: Optional[int] = 0
    reproducible: bool = False
    resolution_mm: Any = "auto"
    nodeo: Optional[NODEOSettings] = None
    affine_settings: Optional[AffineSettings] = None

    @classmethod
    def create(cls, caller: str = "register()", **values: Any) -> "RegistrationOptions":
        """Check ``values`` (keyword names of :data:`OPTIONS`; missing ones take their defaults).

        Raises:
            TypeError: an unknown option, or a value of the wrong type.
            ValueError: a value out of range, naming the option and the allowed values.
        """
        unknown = sorted(set(values) - set(_BY_KEY))
        if unknown:
            raise TypeError(f"{caller}: unknown option '{unknown[0]}'. Must be one of {sorted(_BY_KEY)}")
        checked = {key: option.check(values.get(key, option.default), caller) for key, option in _BY_KEY.items()}
        options = cls(**checked)
        options._check_consistency(caller)
        return options

    def _check_consistency(self, caller: str) -> None:
        levels = (self.nodeo or NODEOSettings()).levels
        if self.iterations is not None and len(self.iterations) > len(levels):
            raise ValueError(
                f"{caller}: 'iterations' must list 1 to {len(levels)} non-negative counts "
                f"(one per pyramid level {levels}, coarse to fine), got {list(self.iterations)}"
            )

    def nodeo_settings(self) -> NODEOSettings:
        """The NODEO settings these options give (``nodeo`` overrides metric, steps and seed)."""
        settings = self.nodeo or NODEOSettings(metric=self.metric, steps=self.steps, seed=self.seed)
        if self.iterations is not None:
            settings = replace(settings, iterations=tuple(self.iterations),
                               levels=settings.levels[-len(self.iterations):])
        return settings

    def affine_stage_settings(self) -> AffineSettings:
        """The affine stage's settings: NGF runs its pre-alignment with mutual information."""
        settings = self.affine_settings or AffineSettings(seed=self.seed)
        if settings.metric is None:
            # NGF compares edge directions, which only overlap once the images are nearly
            # aligned: the affine stage, which must capture large misalignments, uses MI for it.
            settings = replace(settings, metric="mi" if self.metric == "ngf" else self.metric)
        if self.affine == "rigid":
            settings = replace(settings, stages=("rigid",))
        return settings

