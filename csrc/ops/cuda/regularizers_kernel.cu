// CUDA kernels of the displacement-field regularizers and their backwards.
// Energies write a per-voxel density and reduce it with at::mean; backwards
// gather from neighbours (no atomics), using the stencils of fd_stencils.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mean.h>
#include <torch/library.h>

#include <vector>

#include "../common/fd_stencils.h"
#include "../common/regularizer_args.h"
#include "cuda_helpers.h"

namespace itk_odereg {
namespace ops {

namespace {

enum class Energy { Diffusion, Bending, JacobianPenalty };

template <typename F>
auto dispatch_ndim(int64_t ndim, const F& f) {
  return ndim == 3 ? f(std::integral_constant<int, 3>{}) : f(std::integral_constant<int, 2>{});
}

template <Energy E, int NDIM, typename scalar_t>
__global__ void energy_density_kernel(const scalar_t* __restrict__ u, scalar_t* __restrict__ density,
                                      SpatialGeometry<NDIM> g, int64_t batch, SpacingScales<NDIM, scalar_t> sc,
                                      scalar_t tau) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, batch * g.numel) {
    int64_t q[NDIM];
    g.unravel(t % g.numel, q);
    const scalar_t* un = u + (t / g.numel) * NDIM * g.numel;
    if constexpr (E == Energy::Diffusion) {
      density[t] = diffusion_density<NDIM, scalar_t>(un, g, q, sc.first);
    } else if constexpr (E == Energy::Bending) {
      density[t] = bending_density<NDIM, scalar_t>(un, g, q, sc.second);
    } else {
      scalar_t J[NDIM][NDIM];
      jacobian_at<NDIM, scalar_t>(un, g, q, J);
      const scalar_t r = tau - determinant(J);
      density[t] = r > scalar_t(0) ? r * r : scalar_t(0);
    }
  }
}

template <typename scalar_t>
struct PenaltyWeight {
  scalar_t tau;
  __device__ scalar_t operator()(int64_t, scalar_t det) const {
    const scalar_t r = tau - det;
    return r > scalar_t(0) ? scalar_t(-2) * r : scalar_t(0);
  }
};

template <typename scalar_t>
struct GradOutputWeight {
  const scalar_t* go_n;
  __device__ scalar_t operator()(int64_t q, scalar_t) const { return go_n[q]; }
};

template <Energy E, int NDIM, typename scalar_t>
__global__ void energy_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ u,
                                       scalar_t* __restrict__ grad, SpatialGeometry<NDIM> g, int64_t batch,
                                       SpacingScales<NDIM, scalar_t> sc, scalar_t tau) {
  // grad_output is a device scalar: read it here instead of syncing the host.
  const scalar_t scale = grad_output[0] / static_cast<scalar_t>(batch * g.numel);
  ODEREG_CUDA_1D_KERNEL_LOOP(t, batch * g.numel) {
    const int64_t n = t / g.numel, p = t % g.numel;
    int64_t m[NDIM];
    g.unravel(p, m);
    const scalar_t* un = u + n * NDIM * g.numel;
    scalar_t gr[NDIM];
    if constexpr (E == Energy::Diffusion) {
      diffusion_grad_at<NDIM, scalar_t>(un, g, m, sc.first, gr);
    } else if constexpr (E == Energy::Bending) {
      bending_grad_at<NDIM, scalar_t>(un, g, m, sc.second, gr);
    } else {
      determinant_grad_at<NDIM, scalar_t>(un, g, m, PenaltyWeight<scalar_t>{tau}, gr);
    }
#pragma unroll
    for (int i = 0; i < NDIM; ++i) grad[(n * NDIM + i) * g.numel + p] = scale * gr[i];
  }
}

template <int NDIM, typename scalar_t>
__global__ void determinant_kernel(const scalar_t* __restrict__ u, scalar_t* __restrict__ det,
                                   SpatialGeometry<NDIM> g, int64_t batch) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, batch * g.numel) {
    int64_t q[NDIM];
    g.unravel(t % g.numel, q);
    scalar_t J[NDIM][NDIM];
    jacobian_at<NDIM, scalar_t>(u + (t / g.numel) * NDIM * g.numel, g, q, J);
    det[t] = determinant(J);
  }
}

template <int NDIM, typename scalar_t>
__global__ void determinant_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ u,
                                            scalar_t* __restrict__ grad, SpatialGeometry<NDIM> g, int64_t batch) {
  ODEREG_CUDA_1D_KERNEL_LOOP(t, batch * g.numel) {
    const int64_t n = t / g.numel, p = t % g.numel;
    int64_t m[NDIM];
    g.unravel(p, m);
    scalar_t gr[NDIM];
    determinant_grad_at<NDIM, scalar_t>(u + n * NDIM * g.numel, g, m, GradOutputWeight<scalar_t>{grad_output + n * g.numel},
                                        gr);
#pragma unroll
    for (int i = 0; i < NDIM; ++i) grad[(n * NDIM + i) * g.numel + p] = gr[i];
  }
}

template <Energy E>
at::Tensor energy_cuda(const at::Tensor& u_in, const OptionalSpacing& spacing, double threshold, const char* op) {
  const int64_t ndim = check_regularizer_input(u_in, op, E == Energy::Bending ? 3 : 2);
  check_cuda_tensor(u_in, op, "displacement");
  c10::cuda::CUDAGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous();
  at::Tensor density = at::empty({u.size(0) * (u.numel() / (u.size(0) * u.size(1)))}, u.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::regularizer_cuda", [&] {
      const auto sc = make_spacing_scales<NDIM, scalar_t>(spacing, op);
      energy_density_kernel<E, NDIM, scalar_t><<<blocks_for(density.numel()), kThreadsPerBlock, 0, stream>>>(
          u.data_ptr<scalar_t>(), density.data_ptr<scalar_t>(), g, u.size(0), sc, static_cast<scalar_t>(threshold));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return 0;
  });
  return at::mean(density);
}

template <Energy E>
at::Tensor energy_backward_cuda(const at::Tensor& grad_output, const at::Tensor& u_in, const OptionalSpacing& spacing,
                                double threshold, const char* op) {
  const int64_t ndim = check_regularizer_input(u_in, op, E == Energy::Bending ? 3 : 2);
  check_scalar_grad(grad_output, u_in, op);
  check_cuda_tensor(u_in, op, "displacement");
  c10::cuda::CUDAGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous();
  const at::Tensor go = grad_output.contiguous();
  at::Tensor grad = at::empty(u.sizes(), u.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::regularizer_backward_cuda", [&] {
      const auto sc = make_spacing_scales<NDIM, scalar_t>(spacing, op);
      energy_backward_kernel<E, NDIM, scalar_t><<<blocks_for(u.size(0) * g.numel), kThreadsPerBlock, 0, stream>>>(
          go.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), g, u.size(0), sc,
          static_cast<scalar_t>(threshold));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return 0;
  });
  return grad;
}

at::Tensor jacobian_determinant_cuda(const at::Tensor& u_in) {
  const int64_t ndim = check_regularizer_input(u_in, "jacobian_determinant", 2);
  check_cuda_tensor(u_in, "jacobian_determinant", "displacement");
  c10::cuda::CUDAGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous();
  std::vector<int64_t> out_sizes{u.size(0)};
  for (int64_t d = 2; d < u.dim(); ++d) out_sizes.push_back(u.size(d));
  at::Tensor det = at::empty(out_sizes, u.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::jacobian_determinant_cuda", [&] {
      determinant_kernel<NDIM, scalar_t><<<blocks_for(det.numel()), kThreadsPerBlock, 0, stream>>>(
          u.data_ptr<scalar_t>(), det.data_ptr<scalar_t>(), g, u.size(0));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return 0;
  });
  return det;
}

at::Tensor jacobian_determinant_backward_cuda(const at::Tensor& grad_output, const at::Tensor& u_in) {
  const char* op = "_jacobian_determinant_backward";
  const int64_t ndim = check_regularizer_input(u_in, op, 2);
  check_determinant_grad(grad_output, u_in, op);
  check_cuda_tensor(u_in, op, "displacement");
  c10::cuda::CUDAGuard guard(u_in.device());
  const at::Tensor u = u_in.contiguous();
  const at::Tensor go = grad_output.contiguous();
  at::Tensor grad = at::empty(u.sizes(), u.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::_jacobian_determinant_backward_cuda", [&] {
      determinant_backward_kernel<NDIM, scalar_t><<<blocks_for(u.size(0) * g.numel), kThreadsPerBlock, 0, stream>>>(
          go.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), g, u.size(0));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return 0;
  });
  return grad;
}

at::Tensor diffusion_energy_cuda(const at::Tensor& u, OptionalSpacing spacing) {
  return energy_cuda<Energy::Diffusion>(u, spacing, 0.0, "diffusion_energy");
}
at::Tensor diffusion_energy_backward_cuda(const at::Tensor& go, const at::Tensor& u, OptionalSpacing spacing) {
  return energy_backward_cuda<Energy::Diffusion>(go, u, spacing, 0.0, "_diffusion_energy_backward");
}
at::Tensor bending_energy_cuda(const at::Tensor& u, OptionalSpacing spacing) {
  return energy_cuda<Energy::Bending>(u, spacing, 0.0, "bending_energy");
}
at::Tensor bending_energy_backward_cuda(const at::Tensor& go, const at::Tensor& u, OptionalSpacing spacing) {
  return energy_backward_cuda<Energy::Bending>(go, u, spacing, 0.0, "_bending_energy_backward");
}
at::Tensor jacobian_penalty_cuda(const at::Tensor& u, double threshold) {
  return energy_cuda<Energy::JacobianPenalty>(u, c10::nullopt, threshold, "jacobian_penalty");
}
at::Tensor jacobian_penalty_backward_cuda(const at::Tensor& go, const at::Tensor& u, double threshold) {
  return energy_backward_cuda<Energy::JacobianPenalty>(go, u, c10::nullopt, threshold, "_jacobian_penalty_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CUDA, m) {
  m.impl("diffusion_energy", &diffusion_energy_cuda);
  m.impl("_diffusion_energy_backward", &diffusion_energy_backward_cuda);
  m.impl("bending_energy", &bending_energy_cuda);
  m.impl("_bending_energy_backward", &bending_energy_backward_cuda);
  m.impl("jacobian_determinant", &jacobian_determinant_cuda);
  m.impl("_jacobian_determinant_backward", &jacobian_determinant_backward_cuda);
  m.impl("jacobian_penalty", &jacobian_penalty_cuda);
  m.impl("_jacobian_penalty_backward", &jacobian_penalty_backward_cuda);
}

}  // namespace ops
}  // namespace itk_odereg
