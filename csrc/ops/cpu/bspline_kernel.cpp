// CPU kernels of itk_odereg::bspline_to_dense and its adjoint.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/bspline_pass.h"
#include "../common/bspline_shapes.h"
#include "vectorize.h"

namespace itk_odereg {
namespace ops {

namespace {

// The four weights of every dense sample along an axis, computed once per pass
// rather than per row (a division and a cubic each).
template <typename scalar_t>
std::vector<scalar_t> bspline_weight_table(int64_t dense_len, int64_t spacing) {
  std::vector<scalar_t> table(4 * dense_len);
  for (int64_t x = 0; x < dense_len; ++x) {
    cubic_bspline_weights<scalar_t>(static_cast<scalar_t>(x % spacing) / static_cast<scalar_t>(spacing),
                                    table.data() + 4 * x);
  }
  return table;
}

// dst[i] = sum_a w[a] * c_a[i]: one dense row from the four control rows around it.
template <typename scalar_t>
ODEREG_SIMD_CLONES void bspline_row(scalar_t* __restrict__ dst, const scalar_t* __restrict__ c0,
                                    const scalar_t* __restrict__ c1, const scalar_t* __restrict__ c2,
                                    const scalar_t* __restrict__ c3, const scalar_t* w, int64_t n) {
  const scalar_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t i = 0; i < n; ++i) dst[i] = w0 * c0[i] + w1 * c1[i] + w2 * c2[i] + w3 * c3[i];
}

// One separable pass along `dim` (a tensor dim >= 2): control length -> dense length.
at::Tensor bspline_pass_cpu(const at::Tensor& src, int64_t dim, int64_t out_len, int64_t spacing) {
  const PassLayout layout = pass_layout(src, dim, out_len);
  const int64_t in_len = layout.in_len, outer = layout.outer, inner = layout.inner;
  at::Tensor dst = at::empty(layout.out_sizes, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::bspline_pass", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    const std::vector<scalar_t> table = bspline_weight_table<scalar_t>(out_len, spacing);
    const scalar_t* wt = table.data();
    if (inner == 1) {
      // The last axis: one task per line, each sample a 4-tap dot product.
      at::parallel_for(0, outer, std::max<int64_t>(1, 16384 / out_len), [&](int64_t begin, int64_t end) {
        for (int64_t ob = begin; ob < end; ++ob) {
          const scalar_t* src_o = s + ob * in_len;
          scalar_t* dst_o = o + ob * out_len;
          for (int64_t x = 0; x < out_len; ++x) {
            const scalar_t* w = wt + 4 * x;
            const scalar_t* c = src_o + x / spacing;
            dst_o[x] = w[0] * c[0] + w[1] * c[1] + w[2] * c[2] + w[3] * c[3];
          }
        }
      });
      return;
    }
    // One task per output row [o, x, :] keeps the inner loop contiguous.
    at::parallel_for(0, outer * out_len, std::max<int64_t>(1, 16384 / inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t ob = r / out_len, x = r % out_len;
        const scalar_t* src_o = s + ob * in_len * inner;
        scalar_t* dst_row = o + r * inner;
        const scalar_t* w = wt + 4 * x;
        const scalar_t* c0 = src_o + (x / spacing) * inner;
        bspline_row(dst_row, c0, c0 + inner, c0 + 2 * inner, c0 + 3 * inner, w, inner);
      }
    });
  });
  return dst;
}

// The adjoint pass, streaming: every dense row x is read once, in long
// contiguous segments, and added with its four weights into control rows
// x / s .. x / s + 3 (the output block of a task stays in L2). Walking a
// narrow column strip down the rows instead would read one cache line per
// page and stall on every row.
template <typename scalar_t>
ODEREG_SIMD_CLONES void bspline_adjoint_lines(const scalar_t* src_o, scalar_t* dst_o, int64_t in_len, int64_t out_len, int64_t inner,
                           int64_t spacing, const scalar_t* wt, int64_t i0, int64_t i1) {
  for (int64_t k = 0; k < out_len; ++k) std::fill(dst_o + k * inner + i0, dst_o + k * inner + i1, scalar_t(0));
  for (int64_t x = 0; x < in_len; ++x) {
    const scalar_t* w = wt + 4 * x;
    const scalar_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    const scalar_t* __restrict__ row = src_o + x * inner;
    scalar_t* __restrict__ d0 = dst_o + (x / spacing) * inner;
    scalar_t* __restrict__ d1 = d0 + inner;
    scalar_t* __restrict__ d2 = d1 + inner;
    scalar_t* __restrict__ d3 = d2 + inner;
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t v = row[i];
      d0[i] += w0 * v;
      d1[i] += w1 * v;
      d2[i] += w2 * v;
      d3[i] += w3 * v;
    }
  }
}

at::Tensor bspline_adjoint_pass_cpu(const at::Tensor& src, int64_t dim, int64_t out_len, int64_t spacing) {
  const PassLayout layout = pass_layout(src, dim, out_len);
  const int64_t in_len = layout.in_len, outer = layout.outer, inner = layout.inner;
  // Every control row is stored exactly once (the last dense cell feeds rows up to out_len - 1).
  at::Tensor dst = at::empty(layout.out_sizes, src.options());
  TORCH_INTERNAL_ASSERT((in_len - 1) / spacing + 4 == out_len, "itk_odereg::_bspline_to_dense_backward: grid size");
  // Column blocks: long enough for the prefetcher to stream each row segment
  // (several pages), short enough that a task's control rows stay in L2.
  constexpr int64_t kBlock = 8192;
  const int64_t blocks = (inner + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::bspline_adjoint_pass", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    const std::vector<scalar_t> table = bspline_weight_table<scalar_t>(in_len, spacing);
    const scalar_t* wt = table.data();
    if (inner == 1) {
      // The last axis: lines are contiguous, so accumulate straight into them.
      at::parallel_for(0, outer, std::max<int64_t>(1, 16384 / in_len), [&](int64_t begin, int64_t end) {
        for (int64_t ob = begin; ob < end; ++ob) {
          const scalar_t* src_o = s + ob * in_len;
          scalar_t* dst_o = o + ob * out_len;
          for (int64_t k = 0; k < out_len; ++k) dst_o[k] = scalar_t(0);
          for (int64_t x = 0; x < in_len; ++x) {
            const scalar_t* w = wt + 4 * x;
            scalar_t* d = dst_o + x / spacing;
            const scalar_t v = src_o[x];
            d[0] += w[0] * v;
            d[1] += w[1] * v;
            d[2] += w[2] * v;
            d[3] += w[3] * v;
          }
        }
      });
      return;
    }
    at::parallel_for(0, outer * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t ob = task / blocks;
        const int64_t i0 = (task % blocks) * kBlock;
        bspline_adjoint_lines<scalar_t>(s + ob * in_len * inner, o + ob * out_len * inner, in_len, out_len, inner, spacing, wt,
                                        i0, std::min(i0 + kBlock, inner));
      }
    });
  });
  return dst;
}

at::Tensor bspline_to_dense_cpu(const at::Tensor& control, c10::IntArrayRef shape, c10::IntArrayRef spacing) {
  check_bspline_args(control, shape, spacing, "bspline_to_dense", "control");
  check_control_grid(control, shape, spacing, "bspline_to_dense", "control");
  at::Tensor cur = control.contiguous();
  // Last axis first: its rows are contiguous, and every later pass has
  // contiguous inner blocks.
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    cur = bspline_pass_cpu(cur, d + 2, shape[d], spacing[d]);
  }
  return cur;
}

at::Tensor bspline_to_dense_backward_cpu(const at::Tensor& grad_output, c10::IntArrayRef control_shape,
                                         c10::IntArrayRef spacing) {
  const auto ndim = static_cast<int64_t>(control_shape.size());
  check_bspline_backward_args(grad_output, control_shape, spacing);
  at::Tensor cur = grad_output.contiguous();
  for (int64_t d = 0; d < ndim; ++d) {
    cur = bspline_adjoint_pass_cpu(cur, d + 2, control_shape[d], spacing[d]);
  }
  return cur;
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CPU, m) {
  m.impl("bspline_to_dense", &bspline_to_dense_cpu);
  m.impl("_bspline_to_dense_backward", &bspline_to_dense_backward_cpu);
}

}  // namespace ops
}  // namespace itk_odereg
