// Corner-aligned linear resampling along one axis (align_corners=True), shared
// by the CPU and CUDA kernels of itk_odereg::resample_linear: the two taps of
// every output sample, and the argument checks of the entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "checks.h"
#include "geometry.h"
#include "separable_pass.h"

namespace itk_odereg {
namespace ops {

// Output sample x of an axis resampled from in_len to out_len samples sits at
// input position p = x (in_len - 1) / (out_len - 1): out[x] = (1 - w) in[left] + w in[right].
// The position is computed in double, as linear_resampling_matrix does, so
// the weights do not depend on the tensor's dtype beyond its final rounding.
struct LinearTap {
  int64_t left, right;
  double weight;
};

ODEREG_HOST_DEVICE LinearTap linear_tap(int64_t x, int64_t in_len, int64_t out_len) {
  if (in_len == 1) return LinearTap{0, 0, 0.0};
  const double scale = out_len > 1 ? static_cast<double>(in_len - 1) / static_cast<double>(out_len - 1) : 0.0;
  const double p = static_cast<double>(x) * scale;
  int64_t left = static_cast<int64_t>(floor(p));
  if (left > in_len - 2) left = in_len - 2;
  return LinearTap{left, left + 1, p - static_cast<double>(left)};
}

// Weight of input sample k in output sample x (the adjoint reads it this way).
ODEREG_HOST_DEVICE double linear_tap_weight(const LinearTap& t, int64_t k) {
  return (t.left == k ? 1.0 - t.weight : 0.0) + (t.right == k ? t.weight : 0.0);
}

inline int64_t check_resample_args(const at::Tensor& input, c10::IntArrayRef shape, const char* op,
                                   const char* name) {
  check_floating(input, op, name);
  const int64_t ndim = input.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "itk_odereg.", op, "(): '", name,
              "' must have shape [N, C, H, W] (2D) or [N, C, D, H, W] (3D), got ", input.sizes());
  TORCH_CHECK(static_cast<int64_t>(shape.size()) == ndim, "itk_odereg.", op, "(): 'shape' must list one size per "
              "spatial dim of '", name, "' (", ndim, "), got ", shape);
  for (int64_t d = 0; d < input.dim(); ++d) {
    TORCH_CHECK(input.size(d) >= 1, "itk_odereg.", op, "(): '", name, "' must have no empty dim, got ",
                input.sizes());
  }
  for (int64_t d = 0; d < ndim; ++d) {
    TORCH_CHECK(shape[d] >= 1, "itk_odereg.", op, "(): 'shape' must be positive, got ", shape);
  }
  return ndim;
}

}  // namespace ops
}  // namespace itk_odereg
