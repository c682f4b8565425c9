#pragma once

#include <ATen/core/Tensor.h>

namespace itk_odereg {
namespace ops {

// Corner-aligned linear resampling of [N, C, *S] to [N, C, *shape] (2D or 3D,
// tensor order): the first and last samples of every axis stay on the first and
// last samples of the other grid, as F.interpolate(..., align_corners=True).
at::Tensor resample_linear(const at::Tensor& input, c10::IntArrayRef shape);

namespace detail {
// The adjoint (transpose) of resample_linear, which is also its backward.
at::Tensor _resample_linear_backward(const at::Tensor& grad_output, c10::IntArrayRef input_shape);
}  // namespace detail

}  // namespace ops
}  // namespace itk_odereg
