// CUDA kernels of itk_odereg::bspline_to_dense and its adjoint: separable
// passes, one thread per output sample.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../common/bspline_pass.h"
#include "../common/bspline_shapes.h"
#include "cuda_helpers.h"

namespace itk_odereg {
namespace ops {

namespace {

template <typename scalar_t>
__global__ void bspline_pass_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t outer,
                                    int64_t in_len, int64_t out_len, int64_t inner, int64_t spacing, bool adjoint) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, outer * out_len * inner) {
    const int64_t i = t % inner;
    const int64_t x = (t / inner) % out_len;
    const int64_t o = t / (inner * out_len);
    const scalar_t* src_o = src + o * in_len * inner;
    dst[t] = adjoint ? bspline_pass_adjoint_sample<scalar_t>(src_o, inner, in_len, x, i, spacing)
                     : bspline_pass_sample<scalar_t>(src_o, inner, x, i, spacing);
  }
}

at::Tensor bspline_pass_cuda(const at::Tensor& src, int64_t dim, int64_t out_len, int64_t spacing, bool adjoint) {
  const PassLayout layout = pass_layout(src, dim, out_len);
  const int64_t in_len = layout.in_len, outer = layout.outer, inner = layout.inner;
  at::Tensor dst = at::empty(layout.out_sizes, src.options());
  if (dst.numel() == 0) return dst;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::bspline_pass_cuda", [&] {
    bspline_pass_kernel<scalar_t><<<blocks_for(dst.numel()), kThreadsPerBlock, 0, stream>>>(
        src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), outer, in_len, out_len, inner, spacing, adjoint);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dst;
}

at::Tensor bspline_to_dense_cuda(const at::Tensor& control, c10::IntArrayRef shape, c10::IntArrayRef spacing) {
  check_bspline_args(control, shape, spacing, "bspline_to_dense", "control");
  check_control_grid(control, shape, spacing, "bspline_to_dense", "control");
  check_cuda_tensor(control, "bspline_to_dense", "control");
  c10::cuda::CUDAGuard guard(control.device());
  at::Tensor cur = control.contiguous();
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    cur = bspline_pass_cuda(cur, d + 2, shape[d], spacing[d], /*adjoint=*/false);
  }
  return cur;
}

at::Tensor bspline_to_dense_backward_cuda(const at::Tensor& grad_output, c10::IntArrayRef control_shape,
                                          c10::IntArrayRef spacing) {
  const auto ndim = static_cast<int64_t>(control_shape.size());
  check_bspline_backward_args(grad_output, control_shape, spacing);
  check_cuda_tensor(grad_output, "_bspline_to_dense_backward", "grad_output");
  c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor cur = grad_output.contiguous();
  for (int64_t d = 0; d < ndim; ++d) {
    cur = bspline_pass_cuda(cur, d + 2, control_shape[d], spacing[d], /*adjoint=*/true);
  }
  return cur;
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CUDA, m) {
  m.impl("bspline_to_dense", &bspline_to_dense_cuda);
  m.impl("_bspline_to_dense_backward", &bspline_to_dense_backward_cuda);
}

}  // namespace ops
}  // namespace itk_odereg
