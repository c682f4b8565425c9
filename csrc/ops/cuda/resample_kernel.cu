// CUDA kernels of itk_odereg::resample_linear and its adjoint: separable
// passes, one thread per output sample. The adjoint gathers (each input sample
// sums the few output samples that read it), so it needs no atomics and gives
// the same sums on every run.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/linear_resample.h"
#include "cuda_helpers.h"

namespace itk_odereg {
namespace ops {

namespace {

template <typename scalar_t>
__global__ void resample_pass_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t outer,
                                     int64_t in_len, int64_t out_len, int64_t inner) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, outer * out_len * inner) {
    const int64_t i = t % inner;
    const int64_t x = (t / inner) % out_len;
    const int64_t o = t / (inner * out_len);
    const scalar_t* src_o = src + o * in_len * inner;
    const LinearTap tap = linear_tap(x, in_len, out_len);
    dst[t] = static_cast<scalar_t>(1.0 - tap.weight) * src_o[tap.left * inner + i] +
             static_cast<scalar_t>(tap.weight) * src_o[tap.right * inner + i];
  }
}

// dst has in_len samples along the axis, src (the gradient) out_len.
template <typename scalar_t>
__global__ void resample_adjoint_pass_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst,
                                             int64_t outer, int64_t in_len, int64_t out_len, int64_t inner) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, outer * in_len * inner) {
    const int64_t i = t % inner;
    const int64_t k = (t / inner) % in_len;
    const int64_t o = t / (inner * in_len);
    const scalar_t* src_o = src + o * out_len * inner;
    // Output samples x read input k only where their position x * scale lies in (k - 1, k + 1).
    int64_t x0 = 0, x1 = out_len - 1;
    if (in_len > 1 && out_len > 1) {
      const double inv = static_cast<double>(out_len - 1) / static_cast<double>(in_len - 1);
      x0 = static_cast<int64_t>(floor((k - 1) * inv)) - 1;
      x1 = static_cast<int64_t>(ceil((k + 1) * inv)) + 1;
      x0 = x0 < 0 ? 0 : x0;
      x1 = x1 > out_len - 1 ? out_len - 1 : x1;
    }
    scalar_t acc = scalar_t(0);
    for (int64_t x = x0; x <= x1; ++x) {
      const LinearTap tap = linear_tap(x, in_len, out_len);
      if (tap.left == k) acc += static_cast<scalar_t>(1.0 - tap.weight) * src_o[x * inner + i];
      if (tap.right == k) acc += static_cast<scalar_t>(tap.weight) * src_o[x * inner + i];
    }
    dst[t] = acc;
  }
}

at::Tensor resample_pass_cuda(const at::Tensor& src, int64_t dim, int64_t new_len, bool adjoint) {
  const PassLayout layout = pass_layout(src, dim, new_len);
  const int64_t len = layout.in_len, outer = layout.outer, inner = layout.inner;
  at::Tensor dst = at::empty(layout.out_sizes, src.options());
  if (dst.numel() == 0) return dst;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "itk_odereg::resample_pass_cuda", [&] {
    if (adjoint) {
      resample_adjoint_pass_kernel<scalar_t><<<blocks_for(dst.numel()), kThreadsPerBlock, 0, stream>>>(
          src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), outer, new_len, len, inner);
    } else {
      resample_pass_kernel<scalar_t><<<blocks_for(dst.numel()), kThreadsPerBlock, 0, stream>>>(
          src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), outer, len, new_len, inner);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dst;
}

at::Tensor resample_linear_cuda(const at::Tensor& input, c10::IntArrayRef shape) {
  const int64_t ndim = check_resample_args(input, shape, "resample_linear", "input");
  check_cuda_tensor(input, "resample_linear", "input");
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor cur = input.contiguous();
  for (int64_t d = ndim - 1; d >= 0; --d) {
    if (cur.size(d + 2) != shape[d]) cur = resample_pass_cuda(cur, d + 2, shape[d], /*adjoint=*/false);
  }
  return cur.data_ptr() == input.data_ptr() ? cur.clone() : cur;
}

at::Tensor resample_linear_backward_cuda(const at::Tensor& grad_output, c10::IntArrayRef input_shape) {
  const int64_t ndim = check_resample_args(grad_output, input_shape, "_resample_linear_backward", "grad_output");
  check_cuda_tensor(grad_output, "_resample_linear_backward", "grad_output");
  c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor cur = grad_output.contiguous();
  for (int64_t d = 0; d < ndim; ++d) {
    if (cur.size(d + 2) != input_shape[d]) cur = resample_pass_cuda(cur, d + 2, input_shape[d], /*adjoint=*/true);
  }
  return cur.data_ptr() == grad_output.data_ptr() ? cur.clone() : cur;
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CUDA, m) {
  m.impl("resample_linear", &resample_linear_cuda);
  m.impl("_resample_linear_backward", &resample_linear_backward_cuda);
}

}  // namespace ops
}  // namespace itk_odereg
