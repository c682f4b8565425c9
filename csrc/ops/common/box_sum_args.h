// Argument checks and axis layout of _box_sum_, shared by the CPU and CUDA kernels (host only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace itk_odereg {
namespace ops {

// One axis of x viewed as [outer, length, inner].
struct BoxAxis {
  int64_t outer, length, inner, radius;
};

inline void check_box_sum_args(const at::Tensor& x, at::IntArrayRef radii) {
  TORCH_CHECK(x.defined(), "itk_odereg._box_sum_(): 'x' is undefined");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "itk_odereg._box_sum_(): 'x' must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "itk_odereg._box_sum_(): 'x' must be contiguous (it is summed in place)");
  TORCH_CHECK(!radii.empty() && static_cast<int64_t>(radii.size()) <= x.dim(),
              "itk_odereg._box_sum_(): 'radii' must have 1 to x.dim() = ", x.dim(), " entries, got ", radii.size());
  for (int64_t r : radii) {
    TORCH_CHECK(r >= 0, "itk_odereg._box_sum_(): 'radii' must be non-negative, got ", radii);
  }
}

inline BoxAxis box_axis(const at::Tensor& x, int64_t dim, int64_t radius) {
  BoxAxis a{1, x.size(dim), 1, 0};
  for (int64_t d = 0; d < dim; ++d) a.outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) a.inner *= x.size(d);
  a.radius = std::min<int64_t>(radius, std::max<int64_t>(a.length - 1, 0));
  return a;
}

}  // namespace ops
}  // namespace itk_odereg
