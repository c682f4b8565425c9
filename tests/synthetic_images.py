"""Synthetic test images on arbitrary (anisotropic, oblique) grids, shared by the interface tests."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def rot3(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )


def _blobs(points, center, shift):
    """Smooth blobs of physical position (..., d), slightly non-linearly deformed."""
    p = points - np.asarray(center) - np.asarray(shift)
    p = p + 1.5 * np.sin(np.roll(p, -1, axis=-1) / 8.0)
    scale = np.array([14.0, 11.0, 9.0])[: p.shape[-1]]
    bump = np.array([6.0, -5.0, 2.0])[: p.shape[-1]]
    return 100.0 * (np.exp(-np.sum((p / scale) ** 2, -1)) + 0.6 * np.exp(-np.sum(((p - bump) / 5.0) ** 2, -1)))


def synthetic_image(size, spacing, direction, center, shift=(0.0, 0.0, 0.0), dtype=np.float32):
    """A SimpleITK image of smooth blobs centred at ``center`` (LPS mm) on an arbitrary grid."""
    size, spacing = np.asarray(size), np.asarray(spacing, float)
    d = len(size)
    origin = np.asarray(center, float) - direction @ (spacing * (size - 1) / 2)
    index = np.stack(np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")[::-1], -1)  # (z,y,x,[i,j,k])
    points = (index * spacing) @ direction.T + origin
    image = sitk.GetImageFromArray(_blobs(points, center, np.asarray(shift)[:d]).astype(dtype))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    return image
