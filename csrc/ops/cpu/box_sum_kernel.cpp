// CPU kernel of itk_odereg::_box_sum_.
//
// Per axis, x is viewed as [outer, length, inner]. A task takes one outer index
// and a block of consecutive inner indices, loads that [length, block] tile
// into double-precision prefix sums and writes back the window sums
// prefix[min(i + r, L - 1) + 1] - prefix[max(i - r, 0)]. Rows of the tile are
// contiguous in memory for every axis, so each pass streams memory; the sums
// are exact to double rounding whatever the window.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/box_sum_args.h"

namespace itk_odereg {
namespace ops {

namespace {

constexpr int64_t kBlock = 64;

// The last axis (inner == 1): every row is contiguous, so each gets its own
// prefix array; a [length, 1] tile would walk the prefix with a stride of
// kBlock doubles and do one element of work per row of it. Same arithmetic as
// the tiled pass (double prefix sums, one difference), so the same bits.
template <typename scalar_t>
void box_rows_cpu(scalar_t* data, const BoxAxis a) {
  const int64_t length = a.length, radius = a.radius;
  const int64_t grain = std::max<int64_t>(1, 32768 / length);
  at::parallel_for(0, a.outer, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> prefix(static_cast<size_t>(length + 1));
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* row = data + r * length;
      prefix[0] = 0.0;
      for (int64_t i = 0; i < length; ++i) prefix[i + 1] = prefix[i] + static_cast<double>(row[i]);
      for (int64_t i = 0; i < length; ++i) {
        row[i] = static_cast<scalar_t>(prefix[std::min(i + radius, length - 1) + 1] -
                                       prefix[std::max<int64_t>(i - radius, 0)]);
      }
    }
  });
}

template <typename scalar_t>
void box_axis_cpu(scalar_t* data, const BoxAxis a) {
  if (a.radius == 0 || a.length <= 1) return;
  if (a.inner == 1) return box_rows_cpu<scalar_t>(data, a);
  const int64_t blocks = (a.inner + kBlock - 1) / kBlock;
  const int64_t tasks = a.outer * blocks;
  // Grain: enough tiles per task to amortize scheduling.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, a.length * std::min(a.inner, kBlock)));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> prefix(static_cast<size_t>((a.length + 1) * kBlock));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o = task / blocks;
      const int64_t j0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, a.inner - j0);
      scalar_t* base = data + o * a.length * a.inner + j0;
      for (int64_t b = 0; b < width; ++b) prefix[b] = 0.0;
      for (int64_t i = 0; i < a.length; ++i) {
        const scalar_t* row = base + i * a.inner;
        const double* prev = prefix.data() + i * kBlock;
        double* next = prefix.data() + (i + 1) * kBlock;
        for (int64_t b = 0; b < width; ++b) next[b] = prev[b] + static_cast<double>(row[b]);
      }
      for (int64_t i = 0; i < a.length; ++i) {
        const double* hi = prefix.data() + (std::min(i + a.radius, a.length - 1) + 1) * kBlock;
        const double* lo = prefix.data() + std::max<int64_t>(i - a.radius, 0) * kBlock;
        scalar_t* row = base + i * a.inner;
        for (int64_t b = 0; b < width; ++b) row[b] = static_cast<scalar_t>(hi[b] - lo[b]);
      }
    }
  });
}

void box_sum_cpu(at::Tensor& x, at::IntArrayRef radii) {
  check_box_sum_args(x, radii);
  if (x.numel() == 0) return;
  const int64_t nd = static_cast<int64_t>(radii.size());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "itk_odereg::_box_sum_", [&] {
    scalar_t* data = x.data_ptr<scalar_t>();
    for (int64_t k = 0; k < nd; ++k) box_axis_cpu<scalar_t>(data, box_axis(x, x.dim() - nd + k, radii[k]));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CPU, m) { m.impl("_box_sum_", &box_sum_cpu); }

}  // namespace ops
}  // namespace itk_odereg
