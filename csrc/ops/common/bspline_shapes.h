// Shape bookkeeping of bspline_to_dense shared by CPU and CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "checks.h"
#include "separable_pass.h"

namespace itk_odereg {
namespace ops {

inline void check_bspline_args(const at::Tensor& control, c10::IntArrayRef shape, c10::IntArrayRef spacing,
                               const char* op, const char* control_name) {
  check_floating(control, op, control_name);
  const int64_t ndim = static_cast<int64_t>(shape.size());
  TORCH_CHECK(ndim == 2 || ndim == 3, "itk_odereg.", op, "(): 'shape' must list 2 or 3 spatial sizes, got ", shape);
  TORCH_CHECK(static_cast<int64_t>(spacing.size()) == ndim, "itk_odereg.", op,
              "(): 'control_spacing' must have one integer per spatial dim (", ndim, "), got ", spacing);
  TORCH_CHECK(control.dim() == ndim + 2, "itk_odereg.", op, "(): '", control_name, "' must have shape [N, C, *G] with ",
              ndim, " spatial dims, got ", control.sizes());
  TORCH_CHECK(control.size(0) >= 1 && control.size(1) >= 1, "itk_odereg.", op, "(): '", control_name,
              "' must have N >= 1 and C >= 1, got ", control.sizes());
  for (int64_t d = 0; d < ndim; ++d) {
    TORCH_CHECK(spacing[d] >= 1, "itk_odereg.", op, "(): 'control_spacing' must be positive integers, got ", spacing);
    TORCH_CHECK(shape[d] >= 1, "itk_odereg.", op, "(): 'shape' must be positive, got ", shape);
  }
}

// Expected control grid size for a dense shape, as a readable vector.
inline std::vector<int64_t> expected_control_sizes(c10::IntArrayRef shape, c10::IntArrayRef spacing) {
  std::vector<int64_t> sizes(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) sizes[d] = bspline_control_size(shape[d], spacing[d]);
  return sizes;
}

inline void check_control_grid(const at::Tensor& control, c10::IntArrayRef shape, c10::IntArrayRef spacing,
                               const char* op, const char* control_name) {
  const auto expected = expected_control_sizes(shape, spacing);
  bool ok = true;
  for (size_t d = 0; d < expected.size(); ++d) ok = ok && control.size(d + 2) == expected[d];
  TORCH_CHECK(ok, "itk_odereg.", op, "(): '", control_name, "' has control grid ", control.sizes().slice(2),
              " but dense shape ", shape, " with control_spacing ", spacing, " needs ", c10::IntArrayRef(expected),
              " (floor((size - 1) / spacing) + 4 per axis)");
}

// grad_output [N, C, *S] of bspline_to_dense against the control grid it came from.
inline void check_bspline_backward_args(const at::Tensor& grad_output, c10::IntArrayRef control_shape,
                                        c10::IntArrayRef spacing) {
  const char* op = "_bspline_to_dense_backward";
  const auto ndim = static_cast<int64_t>(control_shape.size());
  TORCH_CHECK(grad_output.dim() == ndim + 2, "itk_odereg.", op, "(): 'grad_output' must have ", ndim,
              " spatial dims, got ", grad_output.sizes());
  check_bspline_args(grad_output, grad_output.sizes().slice(2), spacing, op, "grad_output");
  const auto expected = expected_control_sizes(grad_output.sizes().slice(2), spacing);
  TORCH_CHECK(c10::IntArrayRef(expected) == control_shape, "itk_odereg.", op, "(): 'control_shape' ", control_shape,
              " does not match dense shape ", grad_output.sizes().slice(2), " with control_spacing ", spacing,
              " (expected ", c10::IntArrayRef(expected), ")");
}

}  // namespace ops
}  // namespace itk_odereg
