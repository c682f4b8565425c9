"""Unsupervised training of MS-ODENet on brain label maps (``itk-odereg train``).

Every iteration draws, from the training subjects:

* a **self-supervised** pair: one subject's label map rendered twice with
  random contrasts (the same one half of the time), the fixed copy deformed by
  a random known transformation theta~ (B-spline and dense: the displacement
  of B-spline control-point noise of SD ``perturbation_mm``, a smooth random
  field; rigid: rotations up to ``max_rotation_deg`` and translations up to
  ``max_translation_mm``). L_self = |phi_T - phi~|^2 on the dense
  displacement (voxels) inside the head, in units of the perturbation's size
  so that it is O(1);
* an **inter-subject** pair with independent random contrasts:
  L_sim = the modality-independent similarity (``metric``, NGF by default)
  of fixed and warped moving, and L_reg = the diffusion energy of the map.

Loss = L_sim + lambda_self L_self + lambda_reg L_reg (lambda_self = 1;
lambda_reg = 10 for dense, 2 for B-spline, as in the paper, and 0 for rigid).
Adam, with the gradient norm clipped at ``max_grad_norm``. Every ODE step is
gradient-checkpointed, so memory does not grow with the number of steps.
Checkpoints (model, optimizer, iteration, RNG states) are written atomically
every ``checkpoint_every`` iterations and training resumes from them, at the
``learning_rate`` of the resuming call; with the same seed a run is
reproducible on the same machine.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import ops
from ..io_utils import atomic_write
from ..losses import make_metric
from .data import find_label_maps, prepare_label_maps, random_contrast_image
from .model import MSODENet, rigid_displacement

__all__ = ["TrainSettings", "train"]


@dataclass
class TrainSettings:
    """Settings of :func:`train`; distances in mm, angles in degrees."""

    parameterization: str = "bspline"
    resolution_mm: float = 2.0
    iterations: int = 3000
    learning_rate: float = 5e-4
    lambda_self: float = 1.0
    lambda_reg: Optional[float] = None          # None: 10 (dense), 2 (B-spline) or 0 (rigid)
    metric: str = "ngf"
    perturbation_mm: float = 8.0                # largest SD of the B-spline control-point noise
    perturbation_spacing_mm: float = 20.0       # control-point spacing of the B-spline perturbation
    max_grad_norm: float = 1.0
    same_contrast_fraction: float = 0.5         # self-supervised pairs whose two copies share a contrast
    max_rotation_deg: float = 75.0
    max_translation_mm: float = 20.0
    train_subjects: tuple = tuple(range(1, 9))
    seed: int = 0
    checkpoint_every: int = 50
    threads: Optional[int] = None
    device: str = "cpu"
    model: dict = field(default_factory=dict)    # extra MSODENet arguments

    def resolved_lambda_reg(self) -> float:
        if self.lambda_reg is not None:
            return self.lambda_reg
        # A dense field has no control grid to keep it smooth: the paper weights its penalty 5x B-spline's.
        return {"dense": 10.0, "bspline": 2.0}.get(self.parameterization, 0.0)


def build_model(settings: TrainSettings) -> MSODENet:
    kwargs = dict({"parameterization": settings.parameterization}, **settings.model)
    return MSODENet(**kwargs)


def _random_rigid(settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """[1, 6] rigid parameters: angles in radians, translation in voxels."""
    angles = (torch.rand(3, generator=generator) * 2 - 1) * math.radians(settings.max_rotation_deg)
    shift = (torch.rand(3, generator=generator) * 2 - 1) * settings.max_translation_mm / settings.resolution_mm
    return torch.cat([angles, shift])[None]


def _random_perturbation(model: MSODENet, shape, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """The self-supervised target: a displacement [1, 3, *shape] in voxels, fixed to moving.
    B-spline and dense models get the same smooth random field."""
    if model.parameterization == "rigid":
        return rigid_displacement(_random_rigid(settings, generator), list(shape), list(shape))
    spacing = max(1, int(round(settings.perturbation_spacing_mm / settings.resolution_mm)))
    grid = [(s - 1) // spacing + 4 for s in shape]
    amplitude = (0.25 + 0.75 * torch.rand((), generator=generator)) * settings.perturbation_mm / settings.resolution_mm
    control = torch.randn(1, 3, *grid, generator=generator) * amplitude
    return ops.bspline_to_dense(control, list(shape), [spacing] * 3)


def _self_loss(model: MSODENet, predicted: torch.Tensor, target_displacement: torch.Tensor,
               settings: TrainSettings, mask: torch.Tensor) -> torch.Tensor:
    """||phi_T - phi~||^2 on the dense displacement (voxels) inside ``mask`` (the head), in
    units of the perturbation's size: control points or voxels over empty background
    move nothing visible, and their noise would swamp the signal. Rigid motions are
    compared on the field too, because one rotation has several sets of angles."""
    shape = list(mask.shape[2:])
    error = model.displacement(predicted, shape, shape) - target_displacement
    scale = (settings.max_translation_mm if model.parameterization == "rigid" else settings.perturbation_mm)
    scale = scale / settings.resolution_mm
    return (error.square().sum(1, keepdim=True) * mask).sum() / mask.sum().clamp_min(1) / scale**2


def _resume(checkpoint: Path, model: MSODENet, optimizer: torch.optim.Optimizer, generator: torch.Generator,
            settings: TrainSettings, device, log: Callable[[str], None]) -> int:
    """Load model, optimizer and RNG states from ``checkpoint`` (in place); returns the
    iteration it was written at. The optimizer's learning rate becomes ``settings.learning_rate``."""
    state = torch.load(checkpoint, weights_only=False, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    start_iteration = state["iteration"]
    log(f"train: resumed from {checkpoint} at iteration {start_iteration}")
    # The saved optimizer state carries the old rate; the one asked for now wins, so that a
    # run can go on at a lower rate (a fine-tuning phase) from the same checkpoint.
    for group in optimizer.param_groups:
        if group["lr"] != settings.learning_rate:
            log(f"train: learning rate {group['lr']:g} -> {settings.learning_rate:g} from here on")
            group["lr"] = settings.learning_rate
    return start_iteration


def _iteration_losses(model: MSODENet, labels: torch.Tensor, a: int, b: int, shape: list, metric,
                      lambda_reg: float, settings: TrainSettings, generator: torch.Generator, device):
    """(L_self, L_sim, L_reg) of one iteration: subject ``a``'s self-supervised pair and the
    inter-subject pair (``b`` fixed, ``a`` moving); see the module docstring. Draws from
    ``generator`` in a fixed order (reproducible runs)."""
    # Self-supervised: recover a known transformation of one subject.
    moving = random_contrast_image(labels[a], generator).to(device)
    same = torch.rand((), generator=generator) < settings.same_contrast_fraction
    twin = moving if same else random_contrast_image(labels[a], generator).to(device)
    target_u = _random_perturbation(model, shape, settings, generator)
    target_u = target_u.to(device)
    with torch.no_grad():
        fixed = ops.warp(twin, target_u, "zeros")
        head = (ops.warp((labels[a] > 0).float()[None, None].to(device), target_u, "zeros") > 0.5).float()
    predicted = model.integrate(fixed, moving)
    loss_self = _self_loss(model, predicted, target_u, settings, head)
    # Unsupervised: an inter-subject pair with independent contrasts.
    fixed_b = random_contrast_image(labels[b], generator).to(device)
    moving_a = random_contrast_image(labels[a], generator).to(device)
    if model.parameterization == "rigid":
        with torch.no_grad():
            motion = _random_rigid(settings, generator).to(device)
            moving_a = ops.warp(moving_a, rigid_displacement(motion, shape, shape), "zeros")
    u = model.displacement(model.integrate(fixed_b, moving_a), shape, shape)
    loss_sim = metric(fixed_b, ops.warp(moving_a, u, "zeros"))
    loss_reg = ops.diffusion_energy(u) if lambda_reg > 0 else torch.zeros((), device=device)
    return loss_self, loss_sim, loss_reg


def _optimizer_step(model: MSODENet, optimizer: torch.optim.Optimizer, loss: torch.Tensor, settings: TrainSettings,
                    iteration: int, log: Callable[[str], None]) -> None:
    """Backward, clip the gradient norm at ``settings.max_grad_norm``, and step unless it is not finite."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    if torch.isfinite(norm):
        optimizer.step()
    else:  # one degenerate pair must not poison the weights
        log(f"  iteration {iteration + 1}: non-finite gradient, step skipped")


def _log_iteration(record: dict, log_path: Path, iteration: int, start_iteration: int, settings: TrainSettings,
                   log: Callable[[str], None]) -> None:
    """Append ``record`` to the JSON-lines log; print it every 10 iterations and at the first one."""
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if (iteration + 1) % 10 == 0 or iteration == start_iteration:
        log(f"  iteration {iteration + 1}/{settings.iterations}: loss {record['loss']:.4f} "
            f"(sim {record['sim']:.4f}, self {record['self']:.4f}, reg {record['reg']:.4f}), "
            f"{record['seconds']:.0f} s")


def _save_checkpoint(checkpoint: Path, output: Path, model: MSODENet, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, iteration: int, settings: TrainSettings) -> None:
    """Write the resumable checkpoint (model, optimizer, iteration + 1, RNG states) and the model file, atomically."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration + 1,
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
    atomic_write(checkpoint, lambda tmp: torch.save(state, tmp), caller="train")
    save_model(model, output, {"resolution_mm": settings.resolution_mm, "iterations": iteration + 1,
                               "training": {k: v for k, v in asdict(settings).items() if k != "model"}})


def train(label_maps: str | Path, output: str | Path, settings: TrainSettings | None = None,
          resume: bool = True, log: Callable[[str], None] = print) -> MSODENet:
    """Train an MS-ODENet and write it to ``output`` (a ``.pt`` file: config and weights).

    Checkpoints go to ``<output>.ckpt``; a run with ``resume`` continues from it.
    A JSON-lines log of the losses goes to ``<output>.log.jsonl``.
    """
    from ..core.device import resolve_device

    settings = settings or TrainSettings()
    device = resolve_device(settings.device, "train()")
    output = Path(output)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    paths = find_label_maps(label_maps, settings.train_subjects)
    log(f"train: {len(paths)} subjects at {settings.resolution_mm:g} mm, {settings.parameterization} model")
    labels = prepare_label_maps(paths, settings.resolution_mm, output.with_suffix(".labels.pt"), log=log)
    shape = list(labels.shape[1:])
    model = build_model(settings).to(device)
    model.checkpointing = True
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    metric = make_metric(settings.metric)
    checkpoint = output.with_suffix(".ckpt")
    start_iteration = 0
    if resume and checkpoint.exists():
        start_iteration = _resume(checkpoint, model, optimizer, generator, settings, device, log)
    lambda_reg = settings.resolved_lambda_reg()
    log_path = output.with_suffix(".log.jsonl")
    began = time.perf_counter()
    for iteration in range(start_iteration, settings.iterations):
        a, b = torch.randperm(len(paths), generator=generator)[:2].tolist()
        loss_self, loss_sim, loss_reg = _iteration_losses(model, labels, a, b, shape, metric, lambda_reg, settings,
                                                          generator, device)
        loss = loss_sim + settings.lambda_self * loss_self + lambda_reg * loss_reg
        _optimizer_step(model, optimizer, loss, settings, iteration, log)
        record = {"iteration": iteration + 1, "loss": loss.item(), "sim": loss_sim.item(), "self": loss_self.item(),
                  "reg": loss_reg.item(), "seconds": round(time.perf_counter() - began, 1)}
        _log_iteration(record, log_path, iteration, start_iteration, settings, log)
        if (iteration + 1) % settings.checkpoint_every == 0 or iteration + 1 == settings.iterations:
            _save_checkpoint(checkpoint, output, model, optimizer, generator, iteration, settings)
    model.checkpointing = False
    return model


def save_model(model: MSODENet, path: str | Path, metadata: dict) -> None:
    """Write config, metadata and weights (float32) atomically."""
    state = {"config": model.config(), "metadata": metadata,
             "state_dict": {k: v.detach().float().cpu() for k, v in model.state_dict().items()}}
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp), caller="save_model()")


def load_model(path: str | Path) -> tuple[MSODENet, dict]:
    """Read a model written by :func:`save_model`; returns (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_model(): model file '{path}' does not exist")
    state = torch.load(path, weights_only=False, map_location="cpu")
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"load_model(): '{path}' is not an MS-ODENet model file")
    model = MSODENet(**state["config"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), state.get("metadata", {})
