// CUDA kernel of itk_odereg::_box_sum_: per axis, one thread per line of
// [outer, length, inner] runs a double-precision moving-window sum over a copy
// of the input (the copy keeps the in-place update free of read-after-write
// hazards between the window's leading and trailing samples).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../common/box_sum_args.h"
#include "cuda_helpers.h"

namespace itk_odereg {
namespace ops {

namespace {

template <typename scalar_t>
__global__ void box_axis_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, BoxAxis a) {
  ODEREG_CUDA_1D_KERNEL_LOOP(line, a.outer * a.inner) {
    const int64_t o = line / a.inner, j = line % a.inner;
    const scalar_t* in = src + o * a.length * a.inner + j;
    scalar_t* out = dst + o * a.length * a.inner + j;
    double acc = 0.0;
    for (int64_t i = 0; i <= a.radius && i < a.length; ++i) acc += static_cast<double>(in[i * a.inner]);
    for (int64_t i = 0; i < a.length; ++i) {
      out[i * a.inner] = static_cast<scalar_t>(acc);
      if (i + a.radius + 1 < a.length) acc += static_cast<double>(in[(i + a.radius + 1) * a.inner]);
      if (i - a.radius >= 0) acc -= static_cast<double>(in[(i - a.radius) * a.inner]);
    }
  }
}

void box_sum_cuda(at::Tensor& x, at::IntArrayRef radii) {
  check_box_sum_args(x, radii);
  check_cuda_tensor(x, "_box_sum_", "x");
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t nd = static_cast<int64_t>(radii.size());
  at::Tensor copy = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "itk_odereg::_box_sum_", [&] {
    for (int64_t k = 0; k < nd; ++k) {
      const BoxAxis a = box_axis(x, x.dim() - nd + k, radii[k]);
      if (a.radius == 0 || a.length <= 1) continue;
      copy.copy_(x);
      box_axis_kernel<scalar_t><<<blocks_for(a.outer * a.inner), kThreadsPerBlock, 0, stream>>>(
          copy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CUDA, m) { m.impl("_box_sum_", &box_sum_cuda); }

}  // namespace ops
}  // namespace itk_odereg
