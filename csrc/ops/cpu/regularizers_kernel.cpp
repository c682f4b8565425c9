// CPU kernels of the displacement-field regularizers and their backwards.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/fd_stencils.h"
#include "../common/regularizer_args.h"

namespace itk_odereg {
namespace ops {

namespace {

constexpr int64_t kGrain = 2048;

enum class Energy { Diffusion, Bending, JacobianPenalty };

// Calls f.template operator()<NDIM>() with NDIM = 2 or 3 from a runtime value.
template <typename F>
auto dispatch_ndim(int64_t ndim, const F& f) {
  return ndim == 3 ? f(std::integral_constant<int, 3>{}) : f(std::integral_constant<int, 2>{});
}

// Mean over batch and voxels of a per-voxel density. Partial sums are taken in
// double per task and combined in task order, so results are reproducible.
template <Energy E>
at::Tensor energy_cpu(const at::Tensor& u_in, const OptionalSpacing& spacing, double threshold, const char* op) {
  const int64_t ndim = check_regularizer_input(u_in, op, E == Energy::Bending ? 3 : 2);
  const at::Tensor u = u_in.contiguous();
  return dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    const int64_t batch = u.size(0);
    at::Tensor result = at::empty({}, u.options());
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::regularizer", [&] {
      const auto sc = make_spacing_scales<NDIM, scalar_t>(spacing, op);
      const scalar_t tau = static_cast<scalar_t>(threshold);
      const scalar_t* up = u.data_ptr<scalar_t>();
      const double total = at::parallel_reduce(
          0, batch * g.numel, kGrain, 0.0,
          [&](int64_t begin, int64_t end, double acc) {
            int64_t q[NDIM];
            for (int64_t t = begin; t < end; ++t) {
              const int64_t n = t / g.numel;
              g.unravel(t % g.numel, q);
              const scalar_t* un = up + n * NDIM * g.numel;
              if constexpr (E == Energy::Diffusion) {
                acc += diffusion_density<NDIM, scalar_t>(un, g, q, sc.first);
              } else if constexpr (E == Energy::Bending) {
                acc += bending_density<NDIM, scalar_t>(un, g, q, sc.second);
              } else {
                scalar_t J[NDIM][NDIM];
                jacobian_at<NDIM, scalar_t>(un, g, q, J);
                const scalar_t r = tau - determinant(J);
                if (r > 0) acc += r * r;
              }
            }
            return acc;
          },
          std::plus<double>());
      result.fill_(total / static_cast<double>(batch * g.numel));
    });
    return result;
  });
}

template <Energy E>
at::Tensor energy_backward_cpu(const at::Tensor& grad_output, const at::Tensor& u_in, const OptionalSpacing& spacing,
                               double threshold, const char* op) {
  const int64_t ndim = check_regularizer_input(u_in, op, E == Energy::Bending ? 3 : 2);
  check_scalar_grad(grad_output, u_in, op);
  const at::Tensor u = u_in.contiguous();
  at::Tensor grad = at::empty(u.sizes(), u.options());
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    const int64_t batch = u.size(0);
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::regularizer", [&] {
      const auto sc = make_spacing_scales<NDIM, scalar_t>(spacing, op);
      const scalar_t scale = grad_output.item<scalar_t>() / static_cast<scalar_t>(batch * g.numel);
      const scalar_t tau = static_cast<scalar_t>(threshold);
      const scalar_t* up = u.data_ptr<scalar_t>();
      scalar_t* gp = grad.data_ptr<scalar_t>();
      at::parallel_for(0, batch * g.numel, kGrain, [&](int64_t begin, int64_t end) {
        int64_t m[NDIM];
        scalar_t gr[NDIM];
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / g.numel, p = t % g.numel;
          g.unravel(p, m);
          const scalar_t* un = up + n * NDIM * g.numel;
          if constexpr (E == Energy::Diffusion) {
            diffusion_grad_at<NDIM, scalar_t>(un, g, m, sc.first, gr);
          } else if constexpr (E == Energy::Bending) {
            bending_grad_at<NDIM, scalar_t>(un, g, m, sc.second, gr);
          } else {
            auto weight = [&](int64_t, scalar_t det) {
              const scalar_t r = tau - det;
              return r > 0 ? scalar_t(-2) * r : scalar_t(0);
            };
            determinant_grad_at<NDIM, scalar_t>(un, g, m, weight, gr);
          }
          for (int i = 0; i < NDIM; ++i) gp[(n * NDIM + i) * g.numel + p] = scale * gr[i];
        }
      });
    });
  });
  return grad;
}

at::Tensor jacobian_determinant_cpu(const at::Tensor& u_in) {
  const int64_t ndim = check_regularizer_input(u_in, "jacobian_determinant", 2);
  const at::Tensor u = u_in.contiguous();
  std::vector<int64_t> out_sizes{u.size(0)};
  for (int64_t d = 2; d < u.dim(); ++d) out_sizes.push_back(u.size(d));
  at::Tensor det = at::empty(out_sizes, u.options());
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::jacobian_determinant", [&] {
      const scalar_t* up = u.data_ptr<scalar_t>();
      scalar_t* dp = det.data_ptr<scalar_t>();
      at::parallel_for(0, u.size(0) * g.numel, kGrain, [&](int64_t begin, int64_t end) {
        int64_t q[NDIM];
        scalar_t J[NDIM][NDIM];
        for (int64_t t = begin; t < end; ++t) {
          g.unravel(t % g.numel, q);
          jacobian_at<NDIM, scalar_t>(up + (t / g.numel) * NDIM * g.numel, g, q, J);
          dp[t] = determinant(J);
        }
      });
    });
  });
  return det;
}

at::Tensor jacobian_determinant_backward_cpu(const at::Tensor& grad_output, const at::Tensor& u_in) {
  const char* op = "_jacobian_determinant_backward";
  const int64_t ndim = check_regularizer_input(u_in, op, 2);
  check_determinant_grad(grad_output, u_in, op);
  const at::Tensor u = u_in.contiguous();
  const at::Tensor go = grad_output.contiguous();
  at::Tensor grad = at::empty(u.sizes(), u.options());
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::_jacobian_determinant_backward", [&] {
      const scalar_t* up = u.data_ptr<scalar_t>();
      const scalar_t* gop = go.data_ptr<scalar_t>();
      scalar_t* gp = grad.data_ptr<scalar_t>();
      at::parallel_for(0, u.size(0) * g.numel, kGrain, [&](int64_t begin, int64_t end) {
        int64_t m[NDIM];
        scalar_t gr[NDIM];
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / g.numel, p = t % g.numel;
          g.unravel(p, m);
          const scalar_t* go_n = gop + n * g.numel;
          auto weight = [&](int64_t q, scalar_t) { return go_n[q]; };
          determinant_grad_at<NDIM, scalar_t>(up + n * NDIM * g.numel, g, m, weight, gr);
          for (int i = 0; i < NDIM; ++i) gp[(n * NDIM + i) * g.numel + p] = gr[i];
        }
      });
    });
  });
  return grad;
}

at::Tensor diffusion_energy_cpu(const at::Tensor& u, OptionalSpacing spacing) {
  return energy_cpu<Energy::Diffusion>(u, spacing, 0.0, "diffusion_energy");
}
at::Tensor diffusion_energy_backward_cpu(const at::Tensor& go, const at::Tensor& u, OptionalSpacing spacing) {
  return energy_backward_cpu<Energy::Diffusion>(go, u, spacing, 0.0, "_diffusion_energy_backward");
}
at::Tensor bending_energy_cpu(const at::Tensor& u, OptionalSpacing spacing) {
  return energy_cpu<Energy::Bending>(u, spacing, 0.0, "bending_energy");
}
at::Tensor bending_energy_backward_cpu(const at::Tensor& go, const at::Tensor& u, OptionalSpacing spacing) {
  return energy_backward_cpu<Energy::Bending>(go, u, spacing, 0.0, "_bending_energy_backward");
}
at::Tensor jacobian_penalty_cpu(const at::Tensor& u, double threshold) {
  return energy_cpu<Energy::JacobianPenalty>(u, c10::nullopt, threshold, "jacobian_penalty");
}
at::Tensor jacobian_penalty_backward_cpu(const at::Tensor& go, const at::Tensor& u, double threshold) {
  return energy_backward_cpu<Energy::JacobianPenalty>(go, u, c10::nullopt, threshold, "_jacobian_penalty_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CPU, m) {
  m.impl("diffusion_energy", &diffusion_energy_cpu);
  m.impl("_diffusion_energy_backward", &diffusion_energy_backward_cpu);
  m.impl("bending_energy", &bending_energy_cpu);
  m.impl("_bending_energy_backward", &bending_energy_backward_cpu);
  m.impl("jacobian_determinant", &jacobian_determinant_cpu);
  m.impl("_jacobian_determinant_backward", &jacobian_determinant_backward_cpu);
  m.impl("jacobian_penalty", &jacobian_penalty_cpu);
  m.impl("_jacobian_penalty_backward", &jacobian_penalty_backward_cpu);
}

}  // namespace ops
}  // namespace itk_odereg
