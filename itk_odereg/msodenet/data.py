"""Training data for MS-ODENet: brain label maps on one grid, and images synthesized from them.

Every subject's label map is affinely aligned to the first one (on brain masks,
with :func:`~itk_odereg.registration.affine.affine_register`) and resampled
(nearest neighbour) onto a box of ``resolution`` mm around it, so that pairs
of subjects look like the affinely pre-aligned pairs ``register`` hands the
deformable stage. Images get random per-label intensities (contrast
randomization): a model trained on them sees unlimited "modalities" and so
learns to register T1 to T2 as well as T1 to T1.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..core.moments import weighted_centroid
from ..core.separable import gaussian_smooth

__all__ = ["find_label_maps", "prepare_label_maps", "random_contrast_image"]

BOX_MM = (160.0, 192.0, 160.0)  # z, y, x extent of the training box (tensor order)


def find_label_maps(directory: str | Path, subjects: Sequence[int]) -> list[Path]:
    """Paths of ``subjectNN.nii.gz`` (or .nii) in ``directory`` for the given subject numbers."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"train: label-map folder '{directory}' does not exist")
    found = {}
    for path in directory.iterdir():
        match = re.fullmatch(r"subject(\d+)\.nii(\.gz)?", path.name)
        if match:
            found[int(match.group(1))] = path
    missing = [s for s in subjects if s not in found]
    if missing:
        raise FileNotFoundError(f"train: no label map for subject(s) {missing} in '{directory}' "
                                f"(expected subjectNN.nii.gz; found {sorted(found)})")
    return [found[s] for s in subjects]


def prepare_label_maps(paths: Sequence[Path], resolution_mm: float, cache: Optional[Path] = None,
                       log=print) -> torch.Tensor:
    """Label maps aligned to the first one, on a ``BOX_MM`` box at ``resolution_mm``: int64 [N, *S]."""
    import SimpleITK as sitk

    from ..core.grid import ImageGrid
    from ..registration.affine import AffineSettings, affine_register

    if cache is not None and cache.exists():
        data = torch.load(cache, weights_only=True)
        if data["resolution_mm"] == resolution_mm and data["paths"] == [str(p) for p in paths]:
            return data["labels"]
    images = [sitk.ReadImage(str(p)) for p in paths]
    for path, image in zip(paths, images):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"train: '{path}' is not a 3D scalar label map")
    reference = images[0]
    mask0 = sitk.Cast(reference > 0, sitk.sitkFloat32)
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in _centroid_index(sitk.GetArrayViewFromImage(reference) > 0)]))
    size = [int(round(e / resolution_mm)) + 1 for e in BOX_MM[::-1]]  # x, y, z
    box = sitk.Image(size, sitk.sitkInt32)
    box.SetSpacing([resolution_mm] * 3)
    box.SetDirection(reference.GetDirection())
    half = np.array(reference.GetDirection()).reshape(3, 3) @ (np.array(BOX_MM[::-1]) / 2)
    box.SetOrigin(tuple(centre - half))
    settings = AffineSettings(metric="mse")
    out = []
    for k, (path, image) in enumerate(zip(paths, images)):
        if k == 0:
            transform = sitk.Transform(3, sitk.sitkIdentity)
        else:
            mask = sitk.Cast(image > 0, sitk.sitkFloat32)
            fixed_mask, moving_mask = sitk.Shrink(mask0, [2, 2, 2]), sitk.Shrink(mask, [2, 2, 2])
            result = affine_register(
                torch.from_numpy(sitk.GetArrayFromImage(fixed_mask))[None, None],
                ImageGrid.from_sitk(fixed_mask).voxel_to_world_matrix_torch_order(),
                torch.from_numpy(sitk.GetArrayFromImage(moving_mask))[None, None],
                ImageGrid.from_sitk(moving_mask).voxel_to_world_matrix_torch_order(), settings)
            transform = sitk.AffineTransform(3)
            transform.SetMatrix(result.matrix.ravel().tolist())
            transform.SetTranslation(result.translation.tolist())
        resampled = sitk.Resample(image, box, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
        out.append(torch.from_numpy(sitk.GetArrayFromImage(resampled).astype(np.int64)))
        log(f"  prepared {path.name} ({k + 1}/{len(paths)})")
    labels = torch.stack(out)
    if cache is not None:
        torch.save({"resolution_mm": resolution_mm, "paths": [str(p) for p in paths], "labels": labels}, cache)
    return labels


def _centroid_index(mask: np.ndarray) -> np.ndarray:
    """Centroid of a boolean [z, y, x] mask as an (x, y, z) continuous index (float64).

    :func:`~itk_odereg.core.moments.weighted_centroid` of the mask voxels' indices, unit
    weights: in float64 every partial sum is an integer below 2^53, so the result is the
    exact mean, rounded once (what ``np.argwhere(mask).mean(0)`` gives).
    """
    points = torch.nonzero(torch.from_numpy(np.ascontiguousarray(mask))).t().contiguous().double()
    weights = torch.ones(points.shape[1], dtype=torch.float64)
    return weighted_centroid(points, weights).numpy()[::-1]


def random_contrast_image(labels: torch.Tensor, generator: torch.Generator, noise: float = 0.03,
                          blur_voxels: float = 0.5) -> torch.Tensor:
    """[1, 1, *S] float image in [0, 1] of an int label map [*S] with random intensities per label.

    Background (label 0) stays dark half of the time and gets a random
    intensity otherwise; blur and noise follow (in voxels and relative units).
    """
    count = int(labels.max()) + 1
    lut = torch.rand(count, generator=generator)
    if torch.rand((), generator=generator) < 0.5:
        lut[0] = 0.0
    image = lut[labels].float()[None, None]
    if blur_voxels > 0:
        image = gaussian_smooth(image, [blur_voxels] * 3)
    image = image + noise * torch.randn(image.shape, generator=generator)
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
