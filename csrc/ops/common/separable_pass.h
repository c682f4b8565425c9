// Layout of one separable pass along one axis, shared by the ops built from
// such passes (bspline_to_dense, resample_linear) on CPU and CUDA.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace itk_odereg {
namespace ops {

// A separable pass along tensor dim `dim` views a contiguous tensor as
// [outer, length, inner]; the pass changes `length` from in_len to out_len.
struct PassLayout {
  std::vector<int64_t> out_sizes;
  int64_t in_len, outer, inner;
};

inline PassLayout pass_layout(const at::Tensor& src, int64_t dim, int64_t out_len) {
  PassLayout layout{std::vector<int64_t>(src.sizes().begin(), src.sizes().end()), src.size(dim), 1, 1};
  layout.out_sizes[dim] = out_len;
  for (int64_t d = 0; d < dim; ++d) layout.outer *= layout.out_sizes[d];
  for (int64_t d = dim + 1; d < static_cast<int64_t>(layout.out_sizes.size()); ++d) layout.inner *= layout.out_sizes[d];
  return layout;
}

}  // namespace ops
}  // namespace itk_odereg
