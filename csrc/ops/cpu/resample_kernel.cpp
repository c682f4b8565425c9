// CPU kernels of itk_odereg::resample_linear and its adjoint: one separable
// pass per axis, two taps per output sample. A dense matrix per axis (what
// core/separable.py applies with matmul) costs in_len multiply-adds per output
// sample instead of two: 27x more for 54 -> 80 samples.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/linear_resample.h"
#include "vectorize.h"

namespace itk_odereg {
namespace ops {

namespace {

template <typename scalar_t>
struct TapTable {
  std::vector<int64_t> left, right;
  std::vector<scalar_t> w0, w1;  // weights of left and right
};

template <typename scalar_t>
TapTable<scalar_t> tap_table(int64_t in_len, int64_t out_len) {
  TapTable<scalar_t> t{std::vector<int64_t>(out_len), std::vector<int64_t>(out_len), std::vector<scalar_t>(out_len),
                       std::vector<scalar_t>(out_len)};
  for (int64_t x = 0; x < out_len; ++x) {
    const LinearTap tap = linear_tap(x, in_len, out_len);
    t.left[x] = tap.left;
    t.right[x] = tap.right;
    t.w0[x] = static_cast<scalar_t>(1.0 - tap.weight);
    t.w1[x] = static_cast<scalar_t>(tap.weight);
  }
  return t;
}

template <typename scalar_t>
ODEREG_SIMD_CLONES void lerp_row(scalar_t* __restrict__ dst, const scalar_t* __restrict__ a,
                                 const scalar_t* __restrict__ b, scalar_t w0, scalar_t w1, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = w0 * a[i] + w1 * b[i];
}

template <typename scalar_t>
ODEREG_SIMD_CLONES void axpy_row(scalar_t* __restrict__ d, const scalar_t* __restrict__ g, scalar_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] += w * g[i];
}

// da and db must be different rows (a single-sample input axis has left == right: axpy_row).
template <typename scalar_t>
ODEREG_SIMD_CLONES void scatter_row(scalar_t* __restrict__ da, scalar_t* __restrict__ db,
                                    const scalar_t* __restrict__ g, scalar_t w0, scalar_t w1, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    da[i] += w0 * g[i];
    db[i] += w1 * g[i];
  }
}

// One pass along `dim`: in_len -> out_len samples.
at::Tensor resample_pass_cpu(const at::Tensor& src, int64_t dim, int64_t out_len) {
  const PassLayout layout = pass_layout(src, dim, out_len);
  const int64_t in_len = layout.in_len, outer = layout.outer, inner = layout.inner;
  at::Tensor dst = at::empty(layout.out_sizes, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::resample_pass", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    const TapTable<scalar_t> t = tap_table<scalar_t>(in_len, out_len);
    if (inner == 1) {
      at::parallel_for(0, outer, std::max<int64_t>(1, 16384 / out_len), [&](int64_t begin, int64_t end) {
        for (int64_t ob = begin; ob < end; ++ob) {
          const scalar_t* line = s + ob * in_len;
          scalar_t* out = o + ob * out_len;
          for (int64_t x = 0; x < out_len; ++x) out[x] = t.w0[x] * line[t.left[x]] + t.w1[x] * line[t.right[x]];
        }
      });
      return;
    }
    // One task per output row [o, x, :]: contiguous inner loops.
    at::parallel_for(0, outer * out_len, std::max<int64_t>(1, 16384 / inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t ob = r / out_len, x = r % out_len;
        const scalar_t* base = s + ob * in_len * inner;
        lerp_row(o + r * inner, base + t.left[x] * inner, base + t.right[x] * inner, t.w0[x], t.w1[x], inner);
      }
    });
  });
  return dst;
}

// The adjoint pass: out_len (rows of src) -> in_len (rows of dst). Each task owns
// a block of columns of one [o, :, :] slab and adds every source row into its two
// destination rows, in order: no races, and the same sums for any thread count.
at::Tensor resample_adjoint_pass_cpu(const at::Tensor& src, int64_t dim, int64_t in_len) {
  const PassLayout layout = pass_layout(src, dim, in_len);
  const int64_t out_len = layout.in_len, outer = layout.outer, inner = layout.inner;
  at::Tensor dst = at::zeros(layout.out_sizes, src.options());
  // Columns per task: small enough to give both cores work when outer is N * C
  // alone, long enough for the prefetcher; the destination block stays in L2.
  constexpr int64_t kBlock = 2048;
  const int64_t blocks = (inner + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::resample_adjoint_pass", [&] {
    const scalar_t* g = src.data_ptr<scalar_t>();
    scalar_t* d = dst.data_ptr<scalar_t>();
    const TapTable<scalar_t> t = tap_table<scalar_t>(in_len, out_len);
    if (inner == 1) {
      at::parallel_for(0, outer, std::max<int64_t>(1, 16384 / out_len), [&](int64_t begin, int64_t end) {
        for (int64_t ob = begin; ob < end; ++ob) {
          const scalar_t* line = g + ob * out_len;
          scalar_t* acc = d + ob * in_len;
          for (int64_t x = 0; x < out_len; ++x) {
            acc[t.left[x]] += t.w0[x] * line[x];
            acc[t.right[x]] += t.w1[x] * line[x];
          }
        }
      });
      return;
    }
    at::parallel_for(0, outer * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t ob = task / blocks;
        const int64_t i0 = (task % blocks) * kBlock;
        const int64_t n = std::min(kBlock, inner - i0);
        const scalar_t* gs = g + ob * out_len * inner + i0;
        scalar_t* ds = d + ob * in_len * inner + i0;
        for (int64_t x = 0; x < out_len; ++x) {
          if (t.left[x] == t.right[x]) {
            axpy_row(ds + t.left[x] * inner, gs + x * inner, static_cast<scalar_t>(t.w0[x] + t.w1[x]), n);
          } else {
            scatter_row(ds + t.left[x] * inner, ds + t.right[x] * inner, gs + x * inner, t.w0[x], t.w1[x], n);
          }
        }
      }
    });
  });
  return dst;
}

at::Tensor resample_linear_cpu(const at::Tensor& input, c10::IntArrayRef shape) {
  const int64_t ndim = check_resample_args(input, shape, "resample_linear", "input");
  at::Tensor cur = input.contiguous();
  // Last axis first; the adjoint runs the passes in the opposite order.
  for (int64_t d = ndim - 1; d >= 0; --d) {
    if (cur.size(d + 2) != shape[d]) cur = resample_pass_cpu(cur, d + 2, shape[d]);
  }
  return cur.data_ptr() == input.data_ptr() ? cur.clone() : cur;
}

at::Tensor resample_linear_backward_cpu(const at::Tensor& grad_output, c10::IntArrayRef input_shape) {
  const int64_t ndim = check_resample_args(grad_output, input_shape, "_resample_linear_backward", "grad_output");
  at::Tensor cur = grad_output.contiguous();
  for (int64_t d = 0; d < ndim; ++d) {
    if (cur.size(d + 2) != input_shape[d]) cur = resample_adjoint_pass_cpu(cur, d + 2, input_shape[d]);
  }
  return cur.data_ptr() == grad_output.data_ptr() ? cur.clone() : cur;
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CPU, m) {
  m.impl("resample_linear", &resample_linear_cpu);
  m.impl("_resample_linear_backward", &resample_linear_backward_cpu);
}

}  // namespace ops
}  // namespace itk_odereg
