"""Physical-space transforms in ITK's convention (fields: :mod:`._fields`, affines: :mod:`._affine`,
composites: :mod:`._composite`, writers: :mod:`._writers`), and writing them for ITK and SimpleITK (ANTs files: :mod:`itk_odereg.adapters.ants`).

Conventions (``docs/methods.md`` section 3):

* A transform maps a point ``p`` of the **fixed** (output, reference) image to
  the point ``T(p)`` of the **moving** (input) image where it is sampled, in
  physical LPS millimetres, vector components (x, y, z). ``sitk.Resample(moving,
  fixed, T)`` then computes ``out(p) = moving(T(p))``.
* A dense displacement field is stored as float64 array (*shape, d) on the
  fixed grid, i.e. (z, y, x, 3) in 3D, with components (x, y, z) in mm:
  ``T(p) = p + field[p]``.
* The ops' displacements (:mod:`itk_odereg.ops`) are voxel units with
  components in tensor order (z, y, x); the two are related by
  ``u_phys = direction @ (spacing * u_vox[::-1])``
  (:func:`voxel_displacement_to_physical`).
* Composites: ITK and SimpleITK apply the **last added transform first**, so
  "affine, then deformable" (``p -> A(W(p))``) is ``[affine, warp]`` in ITK and
  ``[warp, affine]`` in ANTs transform lists (``fwdtransforms``).
"""
from __future__ import annotations

from ._fields import (
    voxel_displacement_to_physical,
    physical_displacement_to_voxel,
    displacement_field_image,
    displacement_field_itk_image,
    displacement_field_from_image,
    sitk_displacement_transform,
    itk_displacement_transform,
)
from ._affine import (
    affine_matrix_to_sitk,
    affine_matrix_to_itk,
    affine_from_transform,
    affine_to_dense_displacement,
    transform_to_dense_displacement,
    to_sitk_affine,
)
from ._composite import sitk_composite, itk_composite
from ._writers import write_composite_h5, write_transform

__all__ = [
    "voxel_displacement_to_physical",
    "physical_displacement_to_voxel",
    "displacement_field_image",
    "displacement_field_itk_image",
    "displacement_field_from_image",
    "sitk_displacement_transform",
    "itk_displacement_transform",
    "affine_matrix_to_sitk",
    "affine_matrix_to_itk",
    "affine_from_transform",
    "affine_to_dense_displacement",
    "transform_to_dense_displacement",
    "sitk_composite",
    "itk_composite",
    "to_sitk_affine",
    "write_composite_h5",
    "write_transform",
]
