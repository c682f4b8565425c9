"""``nn.Module`` wrappers of the image similarity losses, and the metric registry.

Every module is called as ``loss(fixed, moving, mask=None)`` with images
Tensor[N, C, D, H, W] or Tensor[N, C, H, W] (``moving`` already warped onto the
fixed grid) and returns a 0-dim tensor to minimize. Options are fixed at
construction and shown by ``repr``. Pick one by name with :func:`make_metric`::

    metric = make_metric("lncc", window=9)
    loss = metric(fixed, warped)
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from . import functional as F
from .lncc import FixedStatisticsCache, _lncc
from .ngf import NGFFixedCache, _ngf

__all__ = ["LNCCLoss", "MSELoss", "MILoss", "NGFLoss", "METRICS", "make_metric"]


class LNCCLoss(nn.Module):
    """``1 - mean local NCC^2`` over box windows; see :func:`~itk_odereg.losses.functional.lncc_loss`.

    Args:
        window: odd window width in voxels (or one per spatial dim, tensor order).
            About 9 at 2 mm, 21 at 1 mm (NODEO).
        eps: local-variance regularizer relative to each image's global variance.
    """

    def __init__(self, window: Union[int, Sequence[int]] = 9, eps: float = 1e-3) -> None:
        super().__init__()
        self.window = window if isinstance(window, int) else tuple(window)
        self.eps = eps
        # A registration calls the loss with the same fixed image every iteration: its own
        # terms (2 of the 5 box sums, its centring) are kept for the last fixed image seen.
        self._fixed_cache = FixedStatisticsCache()

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _lncc(fixed, moving, self.window, mask, self.eps, cache=self._fixed_cache)

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps:g}"


class MSELoss(nn.Module):
    """Mean squared difference; see :func:`~itk_odereg.losses.functional.mse_loss`."""

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.mse_loss(fixed, moving, mask=mask)

    def extra_repr(self) -> str:
        return ""


class MILoss(nn.Module):
    """Negative Mattes mutual information; see :func:`~itk_odereg.losses.functional.mutual_information_loss`.

    Args:
        bins: histogram bins per image (>= 8, including 4 of padding).
        samples: None (all voxels), a sample count, or a fraction in (0, 1].
        normalized: use normalized MI ``(H_f + H_m) / H_fm``.
        percentiles: intensity range of an image when no range is given.
        fixed_range: optional (low, high) intensity range of the fixed image.
        moving_range: optional (low, high) range of the moving image; best
            computed once on the unwarped moving image.
        seed: optional seed of the module's own ``torch.Generator`` (CPU) for
            the sampling; None draws from the global RNG.
    """

    def __init__(
        self,
        bins: int = 32,
        samples: Optional[Union[int, float]] = None,
        normalized: bool = False,
        percentiles: Tuple[float, float] = (0.5, 99.5),
        fixed_range: Optional[Tuple[float, float]] = None,
        moving_range: Optional[Tuple[float, float]] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.bins = bins
        self.samples = samples
        self.normalized = normalized
        self.percentiles = tuple(percentiles)
        self.fixed_range = fixed_range
        self.moving_range = moving_range
        self.seed = seed
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        gen = self.generator
        if gen is not None and gen.device != fixed.device:
            # a generator must live on the device it samples on: make one there, seeded alike
            gen = self.generator = torch.Generator(device=fixed.device)
            gen.manual_seed(self.seed)
        return F.mutual_information_loss(
            fixed,
            moving,
            bins=self.bins,
            mask=mask,
            samples=self.samples,
            generator=gen,
            normalized=self.normalized,
            percentiles=self.percentiles,
            fixed_range=self.fixed_range,
            moving_range=self.moving_range,
        )

    def extra_repr(self) -> str:
        s = f"bins={self.bins}, samples={self.samples}, normalized={self.normalized}, percentiles={self.percentiles}"
        if self.fixed_range is not None:
            s += f", fixed_range={self.fixed_range}"
        if self.moving_range is not None:
            s += f", moving_range={self.moving_range}"
        if self.seed is not None:
            s += f", seed={self.seed}"
        return s


class NGFLoss(nn.Module):
    """Normalized gradient fields; see :func:`~itk_odereg.losses.functional.ngf_loss`.

    Args:
        eps: edge parameter relative to each image's RMS gradient magnitude.
        spacing: optional voxel spacing in mm, tensor order.
    """

    def __init__(self, eps: float = 0.1, spacing: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.eps = eps
        self.spacing = None if spacing is None else tuple(spacing)
        # The fixed image's gradient terms are kept for the last fixed image seen (see LNCCLoss).
        self._fixed_cache = NGFFixedCache()

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _ngf(fixed, moving, self.eps, mask, None if self.spacing is None else list(self.spacing),
                    cache=self._fixed_cache)

    def extra_repr(self) -> str:
        s = f"eps={self.eps:g}"
        if self.spacing is not None:
            s += f", spacing={self.spacing}"
        return s


METRICS: Dict[str, Type[nn.Module]] = {
    "lncc": LNCCLoss,
    "mse": MSELoss,
    "mi": MILoss,
    "ngf": NGFLoss,
}


def make_metric(name: str, **kwargs) -> nn.Module:
    """Build the similarity loss registered under ``name`` in :data:`METRICS`.

    Args:
        name: one of ``"lncc"``, ``"mse"``, ``"mi"``, ``"ngf"``.
        **kwargs: the module's constructor arguments.

    Returns:
        The ``nn.Module``.

    Raises:
        ValueError: unknown ``name``.
        TypeError: an argument the module does not take.
    """
    if name not in METRICS:
        raise ValueError('Invalid metric "{}". Must be one of {}'.format(name, list(METRICS)))
    return METRICS[name](**kwargs)
