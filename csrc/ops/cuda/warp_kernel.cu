// CUDA kernels of itk_odereg::warp and itk_odereg::sample_at (warp from another
// corner-aligned grid of the box) and their backwards: one implementation.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "../common/warp_voxel.h"
#include "cuda_helpers.h"

namespace itk_odereg {
namespace ops {

namespace {

template <int NDIM, typename scalar_t>
__global__ void warp_forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ disp,
                                    scalar_t* __restrict__ out, WarpGrids<NDIM, scalar_t> w, int64_t batch,
                                    int64_t channels, Padding padding) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, batch * w.out.numel) {
    const int64_t n = t / w.out.numel, p = t % w.out.numel;
    int64_t index[NDIM];
    w.out.unravel(p, index);
    warp_forward_point<NDIM, scalar_t>(image + n * channels * w.image.numel, disp + n * NDIM * w.out.numel,
                                       out + n * channels * w.out.numel, w, channels, p, index, padding);
  }
}

template <typename scalar_t>
struct AtomicScatter {
  scalar_t* target;  // channel 0 of batch element n
  int64_t numel;
  __device__ void operator()(int64_t offset, int64_t ch, scalar_t value) const {
    atomicAdd(target + ch * numel + offset, value);
  }
};

template <int NDIM, typename scalar_t>
__global__ void warp_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ image,
                                     const scalar_t* __restrict__ disp, scalar_t* grad_image, scalar_t* grad_disp,
                                     WarpGrids<NDIM, scalar_t> w, int64_t batch, int64_t channels, Padding padding,
                                     bool need_image, bool need_disp) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, batch * w.out.numel) {
    const int64_t n = t / w.out.numel, p = t % w.out.numel;
    AtomicScatter<scalar_t> scatter{need_image ? grad_image + n * channels * w.image.numel : nullptr, w.image.numel};
    int64_t index[NDIM];
    w.out.unravel(p, index);
    warp_backward_point<NDIM, scalar_t>(grad_out + n * channels * w.out.numel, image + n * channels * w.image.numel,
                                        disp + n * NDIM * w.out.numel,
                                        need_disp ? grad_disp + n * NDIM * w.out.numel : nullptr, w, channels, p,
                                        index, padding, need_image, need_disp, scatter);
  }
}

template <int NDIM>
at::Tensor warp_forward_impl(const at::Tensor& image_in, const at::Tensor& disp_in, Padding padding) {
  const at::Tensor image = image_in.contiguous();
  const at::Tensor disp = disp_in.contiguous();
  std::vector<int64_t> sizes(disp.sizes().begin(), disp.sizes().end());
  sizes[1] = image.size(1);  // the image's channels on the displacement's grid
  at::Tensor out = at::empty(sizes, image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "itk_odereg::warp_cuda", [&] {
    const auto w = make_warp_grids<NDIM, scalar_t>(image.sizes().slice(2), disp.sizes().slice(2));
    warp_forward_kernel<NDIM, scalar_t><<<blocks_for(batch * w.out.numel), kThreadsPerBlock, 0, stream>>>(
        image.data_ptr<scalar_t>(), disp.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), w, batch, channels, padding);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <int NDIM>
std::tuple<at::Tensor, at::Tensor> warp_backward_impl(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                      const at::Tensor& disp_in, Padding padding, bool need_image,
                                                      bool need_disp) {
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor disp = disp_in.contiguous();
  at::Tensor grad_image = need_image ? at::zeros(image.sizes(), image.options()) : at::empty({0}, image.options());
  at::Tensor grad_disp = need_disp ? at::zeros(disp.sizes(), disp.options()) : at::empty({0}, disp.options());
  if (image.numel() == 0 || disp.numel() == 0 || (!need_image && !need_disp)) return {grad_image, grad_disp};
  const int64_t batch = image.size(0), channels = image.size(1);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "itk_odereg::_warp_backward_cuda", [&] {
    const auto w = make_warp_grids<NDIM, scalar_t>(image.sizes().slice(2), disp.sizes().slice(2));
    warp_backward_kernel<NDIM, scalar_t><<<blocks_for(batch * w.out.numel), kThreadsPerBlock, 0, stream>>>(
        grad.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(), disp.data_ptr<scalar_t>(),
        need_image ? grad_image.data_ptr<scalar_t>() : nullptr, need_disp ? grad_disp.data_ptr<scalar_t>() : nullptr,
        w, batch, channels, padding, need_image, need_disp);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_image, grad_disp};
}

// warp and sample_at run the same kernels; they differ only in the grids their checks accept.
at::Tensor forward_by_dim(const at::Tensor& image, const at::Tensor& displacement, Padding pad) {
  c10::cuda::CUDAGuard guard(image.device());
  return displacement.size(1) == 3 ? warp_forward_impl<3>(image, displacement, pad)
                                   : warp_forward_impl<2>(image, displacement, pad);
}

std::tuple<at::Tensor, at::Tensor> backward_by_dim(const at::Tensor& grad_output, const at::Tensor& image,
                                                   const at::Tensor& displacement, Padding pad, bool need_image,
                                                   bool need_disp) {
  c10::cuda::CUDAGuard guard(image.device());
  return displacement.size(1) == 3 ? warp_backward_impl<3>(grad_output, image, displacement, pad, need_image, need_disp)
                                   : warp_backward_impl<2>(grad_output, image, displacement, pad, need_image, need_disp);
}

at::Tensor warp_cuda(const at::Tensor& image, const at::Tensor& displacement, c10::string_view padding) {
  check_image_and_displacement(image, displacement, "warp");
  check_cuda_tensor(image, "warp", "image");
  return forward_by_dim(image, displacement, parse_padding(padding, "warp"));
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cuda(const at::Tensor& grad_output, const at::Tensor& image,
                                                     const at::Tensor& displacement, c10::string_view padding,
                                                     bool image_requires_grad, bool displacement_requires_grad) {
  check_warp_backward_args(grad_output, image, displacement);
  check_cuda_tensor(image, "_warp_backward", "image");
  return backward_by_dim(grad_output, image, displacement, parse_padding(padding, "_warp_backward"),
                         image_requires_grad, displacement_requires_grad);
}

at::Tensor sample_at_cuda(const at::Tensor& image, const at::Tensor& displacement, c10::string_view padding) {
  check_aligned_image_and_displacement(image, displacement, "sample_at");
  check_cuda_tensor(image, "sample_at", "image");
  return forward_by_dim(image, displacement, parse_padding(padding, "sample_at"));
}

std::tuple<at::Tensor, at::Tensor> sample_at_backward_cuda(const at::Tensor& grad_output, const at::Tensor& image,
                                                          const at::Tensor& displacement, c10::string_view padding,
                                                          bool image_requires_grad, bool displacement_requires_grad) {
  check_sample_at_backward_args(grad_output, image, displacement);
  check_cuda_tensor(image, "_sample_at_backward", "image");
  return backward_by_dim(grad_output, image, displacement, parse_padding(padding, "_sample_at_backward"),
                         image_requires_grad, displacement_requires_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CUDA, m) {
  m.impl("warp", &warp_cuda);
  m.impl("_warp_backward", &warp_backward_cuda);
  m.impl("sample_at", &sample_at_cuda);
  m.impl("_sample_at_backward", &sample_at_backward_cuda);
}

}  // namespace ops
}  // namespace itk_odereg
