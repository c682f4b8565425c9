#pragma once

#include <ATen/core/Tensor.h>

namespace itk_odereg {
namespace ops {

// Dense field [N, C, *shape] from a cubic B-spline control grid [N, C, *G] with
// integer control spacing (voxels, one per spatial dim, tensor order).
// Control point k along an axis sits at voxel (k - 1) * spacing, so the grid
// starts one control point before voxel 0 and G = floor((S - 1) / spacing) + 4.
at::Tensor bspline_to_dense(const at::Tensor& control, c10::IntArrayRef shape, c10::IntArrayRef control_spacing);

namespace detail {
// The adjoint (transpose) of bspline_to_dense, which is also its backward.
at::Tensor _bspline_to_dense_backward(const at::Tensor& grad_output, c10::IntArrayRef control_shape,
                                      c10::IntArrayRef control_spacing);
}  // namespace detail

}  // namespace ops
}  // namespace itk_odereg
