"""Synthetic test images on arbitrary (anisotropic, oblique) grids, and the checks and
fixtures shared by the interface tests (filters, CLI, ANTs-style)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch


def rot3(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )


def rot2(a):
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


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


CENTER = np.array([10.0, -20.0, 30.0])


def oblique_pair():
    """Fixed: anisotropic and oblique. Moving: another grid (size, spacing, origin,
    direction all differ) holding slightly shifted and deformed content."""
    fixed = synthetic_image((26, 22, 18), (1.6, 2.0, 2.6), rot3(0.2, -0.15, 0.3), CENTER)
    moving = synthetic_image((24, 26, 20), (2.2, 1.8, 2.0), rot3(-0.1, 0.2, -0.25), CENTER + [1.0, 1.0, 0.0],
                             shift=(2.5, -1.5, 1.0))
    return fixed, moving


def write_oblique_pair(directory) -> dict:
    """:func:`oblique_pair` written as ``fixed.nii.gz`` and ``moving.nii.gz`` in ``directory``; their paths."""
    fixed, moving = oblique_pair()
    paths = {"fixed": str(directory / "fixed.nii.gz"), "moving": str(directory / "moving.nii.gz")}
    sitk.WriteImage(fixed, paths["fixed"])
    sitk.WriteImage(moving, paths["moving"])
    return paths


def inner_mask(moving, fixed, transform, margin=1):
    """Fixed voxels whose T(p) lies at least ``margin`` voxels inside the moving grid (computed by sitk)."""
    arr = np.zeros(sitk.GetArrayViewFromImage(moving).shape, np.uint8)
    arr[(slice(margin, -margin),) * moving.GetDimension()] = 1
    inner = sitk.GetImageFromArray(arr)
    inner.CopyInformation(moving)
    return sitk.GetArrayFromImage(sitk.Resample(inner, fixed, transform, sitk.sitkNearestNeighbor, 0)) > 0


def assert_same_image(actual, expected, mask, rel=1e-4):
    """Equal within ``rel`` of the largest value inside ``mask``; outside it (where the two
    resamplers may treat the moving grid's edge differently) at most 1% of voxels differ."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    tol = rel * float(np.abs(expected).max()) + 1e-5
    diff = np.abs(actual - expected)
    assert mask.mean() > 0.5, "the test case should keep most voxels inside"
    assert diff[mask].max() <= tol, f"max difference {diff[mask].max()} > {tol} inside"
    assert (diff > tol).mean() < 0.01, "more than 1% of all voxels differ"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny registrations run faster on one thread, and far faster on a busy 2-core machine.
    Applies to the test modules that import it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
