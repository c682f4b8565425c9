"""Mean squared difference."""
from __future__ import annotations

from typing import Optional

import torch

from ._checks import _check_pair, _prepare_mask


# --------------------------------------------------------------------------------------------
# MSE
# --------------------------------------------------------------------------------------------


def mse_loss(fixed: torch.Tensor, moving: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared intensity difference, ``mean (fixed - moving)^2``.

    Only meaningful for images of the same modality and intensity scale.

    Args:
        fixed: Tensor[N, C, D, H, W] or Tensor[N, C, H, W], float32/float64.
        moving: warped moving image, same shape, dtype and device.
        mask: optional Tensor[N or 1, 1, *S]; the mean is over mask voxels only.

    Returns:
        0-dim tensor in intensity^2 units.

    Raises:
        ValueError: bad shapes, dtypes or devices.
    """
    _check_pair(fixed, moving, "mse_loss")
    m = _prepare_mask(mask, fixed, "mse_loss")
    diff2 = (fixed - moving).square()
    if m is None:
        return diff2.mean()
    return (diff2 * m).sum() / (m.sum() * fixed.shape[1]).clamp_min(1.0)
