// One separable pass of cubic B-spline evaluation along one axis, and its
// adjoint, shared by the CPU and CUDA kernels. A tensor is viewed as
// [outer, length, inner] around the axis being processed.
#pragma once

#include "interp_weights.h"

namespace itk_odereg {
namespace ops {

// dst[o, x, i] = sum_{a=0..3} w_a((x mod s) / s) * src[o, x / s + a, i]
template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t bspline_pass_sample(const scalar_t* src_o, int64_t inner, int64_t x, int64_t i,
                                                int64_t s) {
  scalar_t w[4];
  cubic_bspline_weights<scalar_t>(static_cast<scalar_t>(x % s) / static_cast<scalar_t>(s), w);
  const int64_t k = x / s;
  return w[0] * src_o[(k + 0) * inner + i] + w[1] * src_o[(k + 1) * inner + i] +
         w[2] * src_o[(k + 2) * inner + i] + w[3] * src_o[(k + 3) * inner + i];
}

// Adjoint: dst[o, k, i] = sum_{a, x : x / s == k - a} w_a((x mod s) / s) * src[o, x, i],
// a gather over the dense samples that control point k influences.
template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t bspline_pass_adjoint_sample(const scalar_t* src_o, int64_t inner, int64_t dense_len,
                                                        int64_t k, int64_t i, int64_t s) {
  scalar_t acc = scalar_t(0);
  for (int a = 0; a < 4; ++a) {
    const int64_t cell = k - a;
    if (cell < 0) break;
    const int64_t x0 = cell * s;
    const int64_t x1 = x0 + s < dense_len ? x0 + s : dense_len;
    for (int64_t x = x0; x < x1; ++x) {
      acc += cubic_bspline_weight<scalar_t>(x, s, a) * src_o[x * inner + i];
    }
  }
  return acc;
}

}  // namespace ops
}  // namespace itk_odereg
