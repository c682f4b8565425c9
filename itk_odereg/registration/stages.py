"""The registration stages, siblings behind one signature, in one registry.

Every stage is ``run(problem: StageProblem) -> StageResult``:

* a **linear** stage (``affine``, ``rigid``) sees the fixed and moving images on their own
  grids and returns the affine ``T(p) = A p + t`` (fixed to moving, LPS mm);
* a **deformable** stage (``nodeo``, ``msodenet``, ``msodenet+nodeo``, ``none``) sees both
  images on the working grid, the moving image already resampled through the affine, and
  returns the displacement and its inverse in voxels of that grid (tensor axis order).

"No deformable stage" is the stage ``none``: the identity, at no cost. The engine
(:mod:`.engine`) chains one linear stage (or none) and one deformable stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch

if TYPE_CHECKING:  # the options import this registry for their choices
    from .options import RegistrationOptions

__all__ = ["Stage", "StageProblem", "StageResult", "STAGES", "LINEAR_STAGES", "DEFORMABLE_STAGES", "AFFINE_MODES"]


@dataclass(frozen=True)
class StageProblem:
    """What a stage is given.

    Attributes:
        fixed, moving: ``Tensor[1, 1, *S]``, intensities normalized (1st..99th percentile to [0, 1]).
            Linear stages: each on its own grid. Deformable stages: both on the working grid.
        fixed_index_to_world, moving_index_to_world: (d+1)x(d+1) matrices from torch-order voxel
            indices to LPS mm (for deformable stages both are the working grid's).
        spacing_mm: the fixed (working) grid's spacing in tensor axis order.
        options: the run's :class:`~itk_odereg.registration.options.RegistrationOptions`.
        progress: called with one dict per iteration, or None.
        timings: the run's timings (a stage may add entries, e.g. ``msodenet``).
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_index_to_world: np.ndarray
    moving_index_to_world: np.ndarray
    spacing_mm: Sequence[float]
    options: "RegistrationOptions"
    progress: Optional[Callable[[dict], None]] = None
    timings: dict = field(default_factory=dict)


@dataclass
class StageResult:
    """What a stage returns: an affine (linear stages) or a displacement and its inverse (deformable ones)."""

    affine_matrix: Optional[np.ndarray] = None
    affine_translation: Optional[np.ndarray] = None
    displacement: Optional[torch.Tensor] = None
    inverse_displacement: Optional[torch.Tensor] = None
    loss_history: list = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    """A registered stage: ``kind`` is ``"linear"`` or ``"deformable"``; ``run(problem) -> StageResult``."""

    name: str
    kind: str
    run: Callable[[StageProblem], StageResult]
    description: str


def _linear(problem: StageProblem) -> StageResult:
    from .affine import affine_register

    result = affine_register(problem.fixed, problem.fixed_index_to_world, problem.moving,
                             problem.moving_index_to_world, problem.options.affine_stage_settings(),
                             progress=problem.progress)
    return StageResult(affine_matrix=result.matrix, affine_translation=result.translation,
                       loss_history=list(result.loss_history))


def _nodeo(problem: StageProblem, initial_displacement: Optional[torch.Tensor] = None) -> StageResult:
    from .nodeo import nodeo_register

    result = nodeo_register(problem.fixed, problem.moving, problem.spacing_mm, problem.options.nodeo_settings(),
                            progress=problem.progress, initial_displacement=initial_displacement)
    return StageResult(displacement=result.displacement, inverse_displacement=result.inverse_displacement,
                       loss_history=[dict(r, stage="nodeo") for r in result.loss_history])


def _msodenet(problem: StageProblem) -> StageResult:
    from ..msodenet.pretrained import msodenet_register

    learned = msodenet_register(problem.fixed, problem.moving, problem.spacing_mm, problem.options.model)
    problem.timings["msodenet"] = learned.seconds
    return StageResult(displacement=learned.displacement, inverse_displacement=learned.inverse_displacement,
                       loss_history=[dict(r, stage="msodenet") for r in learned.loss_history])


def _msodenet_nodeo(problem: StageProblem) -> StageResult:
    from .. import ops

    learned = _msodenet(problem)
    # NODEO refines the learned map: it registers the moving image seen through u0
    # (resampled once, not warped by u0 and again by u_n), and the maps compose,
    # x -> x + u_n(x) -> (that) + u0(that).
    u0, w0 = learned.displacement, learned.inverse_displacement
    refined = _nodeo(problem, initial_displacement=u0)
    refined.displacement = refined.displacement + ops.warp(u0, refined.displacement, "border")
    refined.inverse_displacement = w0 + ops.warp(refined.inverse_displacement, w0, "border")
    return refined


def _identity(problem: StageProblem) -> StageResult:
    shape = (1, problem.fixed.dim() - 2, *problem.fixed.shape[2:])
    zeros = torch.zeros(shape, dtype=problem.fixed.dtype, device=problem.fixed.device)
    return StageResult(displacement=zeros, inverse_displacement=zeros.clone())


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("affine", "linear", _linear, "centres of mass, then rigid, then affine (the default)"),
        Stage("rigid", "linear", _linear, "centres of mass, then rigid"),
        Stage("nodeo", "deformable", _nodeo, "per-pair neural-ODE optimization (the default)"),
        Stage("msodenet", "deformable", _msodenet, "a trained MS-ODENet model: a few solver steps, 3D only"),
        Stage("msodenet+nodeo", "deformable", _msodenet_nodeo, "MS-ODENet, then NODEO refines"),
        Stage("none", "deformable", _identity, "no deformable stage: the affine alone"),
    )
}

LINEAR_STAGES: tuple[str, ...] = tuple(name for name, s in STAGES.items() if s.kind == "linear")
DEFORMABLE_STAGES: tuple[str, ...] = tuple(name for name, s in STAGES.items() if s.kind == "deformable")
#: values of the ``affine`` option: a linear stage, or None for no pre-alignment.
AFFINE_MODES: tuple[Any, ...] = LINEAR_STAGES + (None,)
