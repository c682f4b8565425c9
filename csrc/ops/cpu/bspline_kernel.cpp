// CPU kernels of itk_odereg::bspline_to_dense and its adjoint.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../common/bspline_pass.h"
#include "../common/bspline_shapes.h"

namespace itk_odereg {
namespace ops {

namespace {

// One separable pass along `dim` (a tensor dim >= 2): control length -> dense length.
at::Tensor bspline_pass_cpu(const at::Tensor& src, int64_t dim, int64_t out_len, int64_t spacing) {
  std::vector<int64_t> out_sizes(src.sizes().begin(), src.sizes().end());
  const int64_t in_len = out_sizes[dim];
  out_sizes[dim] = out_len;
  at::Tensor dst = at::empty(out_sizes, src.options());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= out_sizes[d];
  for (int64_t d = dim + 1; d < static_cast<int64_t>(out_sizes.size()); ++d) inner *= out_sizes[d];
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::bspline_pass", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    // One task per output row [o, x, :] keeps the inner loop contiguous.
    at::parallel_for(0, outer * out_len, std::max<int64_t>(1, 16384 / inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t ob = r / out_len, x = r % out_len;
        const scalar_t* src_o = s + ob * in_len * inner;
        scalar_t* dst_row = o + r * inner;
        scalar_t w[4];
        cubic_bspline_weights<scalar_t>(static_cast<scalar_t>(x % spacing) / static_cast<scalar_t>(spacing), w);
        const scalar_t* c0 = src_o + (x / spacing) * inner;
        const scalar_t* c1 = c0 + inner;
        const scalar_t* c2 = c1 + inner;
        const scalar_t* c3 = c2 + inner;
        for (int64_t i = 0; i < inner; ++i) dst_row[i] = w[0] * c0[i] + w[1] * c1[i] + w[2] * c2[i] + w[3] * c3[i];
      }
    });
  });
  return dst;
}

// The adjoint pass, streaming: every dense row x is read once and added, with
// its four weights, into control rows x / s .. x / s + 3, which stay in cache
// because columns are processed in blocks. (A gather per control row would
// read every dense row four times.)
at::Tensor bspline_adjoint_pass_cpu(const at::Tensor& src, int64_t dim, int64_t out_len, int64_t spacing) {
  std::vector<int64_t> out_sizes(src.sizes().begin(), src.sizes().end());
  const int64_t in_len = out_sizes[dim];
  out_sizes[dim] = out_len;
  at::Tensor dst = at::zeros(out_sizes, src.options());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= out_sizes[d];
  for (int64_t d = dim + 1; d < static_cast<int64_t>(out_sizes.size()); ++d) inner *= out_sizes[d];
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = (inner + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::bspline_adjoint_pass", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    at::parallel_for(0, outer * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t ob = task / blocks;
        const int64_t i0 = (task % blocks) * kBlock;
        const int64_t i1 = std::min(i0 + kBlock, inner);
        const scalar_t* src_o = s + ob * in_len * inner;
        scalar_t* dst_o = o + ob * out_len * inner;
        for (int64_t x = 0; x < in_len; ++x) {
          scalar_t w[4];
          cubic_bspline_weights<scalar_t>(static_cast<scalar_t>(x % spacing) / static_cast<scalar_t>(spacing), w);
          const scalar_t* src_row = src_o + x * inner;
          scalar_t* d0 = dst_o + (x / spacing) * inner;
          for (int a = 0; a < 4; ++a) {
            scalar_t* d = d0 + a * inner;
            const scalar_t wa = w[a];
            for (int64_t i = i0; i < i1; ++i) d[i] += wa * src_row[i];
          }
        }
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
