// Argument handling shared by the CPU and CUDA regularizer entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <vector>

#include "checks.h"

namespace itk_odereg {
namespace ops {

using OptionalSpacing = c10::optional<c10::ArrayRef<double>>;

// Squared spacing factors so that derivatives become physical: the physical
// displacement component i is h_i u_i (mm) and a derivative along j divides by
// h_j. Plain-old-data so CUDA kernels can take it by value.
template <int NDIM, typename scalar_t>
struct SpacingScales {
  scalar_t first[NDIM][NDIM];         // (h_i / h_j)^2
  scalar_t second[NDIM][NDIM][NDIM];  // (h_i / (h_a h_b))^2
};

template <int NDIM, typename scalar_t>
SpacingScales<NDIM, scalar_t> make_spacing_scales(const OptionalSpacing& spacing, const char* op) {
  double h[NDIM];
  for (int d = 0; d < NDIM; ++d) h[d] = 1.0;
  if (spacing.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(spacing->size()) == NDIM, "itk_odereg.", op, "(): 'spacing' must have ", NDIM,
                " values (mm per voxel, tensor order), got ", *spacing);
    for (int d = 0; d < NDIM; ++d) {
      TORCH_CHECK((*spacing)[d] > 0 && std::isfinite((*spacing)[d]), "itk_odereg.", op,
                  "(): 'spacing' must be finite and positive, got ", *spacing);
      h[d] = (*spacing)[d];
    }
  }
  SpacingScales<NDIM, scalar_t> s{};
  for (int i = 0; i < NDIM; ++i) {
    for (int a = 0; a < NDIM; ++a) {
      const double f = h[i] / h[a];
      s.first[i][a] = static_cast<scalar_t>(f * f);
      for (int b = 0; b < NDIM; ++b) {
        const double f2 = h[i] / (h[a] * h[b]);
        s.second[i][a][b] = static_cast<scalar_t>(f2 * f2);
      }
    }
  }
  return s;
}

// Derivatives need two samples per axis, second derivatives three.
inline int64_t check_regularizer_input(const at::Tensor& u, const char* op, int64_t min_size) {
  return check_displacement(u, op, "displacement", min_size);
}

inline void check_scalar_grad(const at::Tensor& grad_output, const at::Tensor& u, const char* op) {
  TORCH_CHECK(grad_output.numel() == 1, "itk_odereg.", op, "(): 'grad_output' must be a scalar, got shape ",
              grad_output.sizes());
  check_same_dtype_device(grad_output, "grad_output", u, "displacement", op);
}

// grad_output of jacobian_determinant: [N, *S] like the determinant itself.
inline void check_determinant_grad(const at::Tensor& grad_output, const at::Tensor& u, const char* op) {
  check_same_dtype_device(grad_output, "grad_output", u, "displacement", op);
  std::vector<int64_t> expected{u.size(0)};
  for (int64_t d = 2; d < u.dim(); ++d) expected.push_back(u.size(d));
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), "itk_odereg.", op, "(): 'grad_output' must have shape ",
              c10::IntArrayRef(expected), ", got ", grad_output.sizes());
}

}  // namespace ops
}  // namespace itk_odereg
