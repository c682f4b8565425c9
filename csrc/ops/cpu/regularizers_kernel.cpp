// CPU kernels of the displacement-field regularizers and their backwards.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>
#include <torch/library.h>

#include "../common/fd_stencils.h"
#include "../common/regularizer_args.h"
#include "fd_passes.h"
#include "fd_rows.h"

namespace itk_odereg {
namespace ops {

namespace {

constexpr int64_t kGrain = 2048;

// Energies computed per voxel from common/fd_stencils.h (bending uses passes, below).
enum class Energy { Diffusion, JacobianPenalty };

// Calls f.template operator()<NDIM>() with NDIM = 2 or 3 from a runtime value.
template <typename F>
auto dispatch_ndim(int64_t ndim, const F& f) {
  return ndim == 3 ? f(std::integral_constant<int, 3>{}) : f(std::integral_constant<int, 2>{});
}

// Determinants of the maps x + u(x) at a row segment's voxels, from their derivatives
// d[(i * NDIM + j) * count + x] (fd_rows.h): jacobian_at's J and determinant() per voxel.
template <int NDIM, typename scalar_t>
ODEREG_SIMD_CLONES void row_determinants(const scalar_t* __restrict__ d, int64_t count, scalar_t* __restrict__ det) {
  for (int64_t x = 0; x < count; ++x) {
    scalar_t J[NDIM][NDIM];
    for (int i = 0; i < NDIM; ++i) {
      for (int j = 0; j < NDIM; ++j) J[i][j] = d[(i * NDIM + j) * count + x] + (i == j ? scalar_t(1) : scalar_t(0));
    }
    det[x] = determinant(J);
  }
}

// diffusion_density per voxel of a row segment, from its derivatives (as row_determinants).
template <int NDIM, typename scalar_t>
ODEREG_SIMD_CLONES void row_diffusion_densities(const scalar_t* __restrict__ d, int64_t count,
                                                const scalar_t scale[NDIM][NDIM], scalar_t* __restrict__ out) {
  for (int64_t x = 0; x < count; ++x) {
    scalar_t acc = scalar_t(0);
    for (int i = 0; i < NDIM; ++i) {
      for (int j = 0; j < NDIM; ++j) {
        const scalar_t v = d[(i * NDIM + j) * count + x];
        acc += scale[i][j] * v * v;
      }
    }
    out[x] = acc;
  }
}

// Visits the voxels [begin, end) of a batch of fields by row segments: f(t, count, d), with t
// the segment's first voxel (batch-flattened index), count its length and d its first
// derivatives (fd_rows.h).
template <int NDIM, typename scalar_t, typename F>
void for_row_segments(const scalar_t* up, const SpatialGeometry<NDIM>& g, int64_t begin, int64_t end, const F& f) {
  const int64_t n = g.size[NDIM - 1];
  std::vector<scalar_t> derivatives(NDIM * NDIM * n);
  int64_t q[NDIM];
  for (int64_t t = begin; t < end;) {
    g.unravel(t % g.numel, q);
    const int64_t x0 = q[NDIM - 1], count = std::min(end - t, n - x0);
    const scalar_t* un = up + (t / g.numel) * NDIM * g.numel;
    row_first_derivatives<NDIM, scalar_t>(un, g, q, x0, count, derivatives.data());
    f(t, count, derivatives.data());
    t += count;
  }
}

// Mean over batch and voxels of a per-voxel density. Partial sums are taken in
// double per task and combined in task order, so results are reproducible; within
// a task the densities are added in voxel order, as the per-voxel formulas would be.
template <Energy E>
at::Tensor energy_cpu(const at::Tensor& u_in, const OptionalSpacing& spacing, double threshold, const char* op) {
  const int64_t ndim = check_regularizer_input(u_in, op, 2);
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
            std::vector<scalar_t> density(g.size[NDIM - 1]);
            for_row_segments<NDIM, scalar_t>(up, g, begin, end, [&](int64_t, int64_t count, const scalar_t* d) {
              if constexpr (E == Energy::Diffusion) {
                row_diffusion_densities<NDIM, scalar_t>(d, count, sc.first, density.data());
                for (int64_t x = 0; x < count; ++x) acc += density[x];
              } else {
                row_determinants<NDIM, scalar_t>(d, count, density.data());
                for (int64_t x = 0; x < count; ++x) {
                  const scalar_t r = tau - density[x];
                  if (r > 0) acc += r * r;
                }
              }
            });
            return acc;
          },
          std::plus<double>());
      result.fill_(total / static_cast<double>(batch * g.numel));
    });
    return result;
  });
}


// The bending energy by whole-field passes (see fd_passes.h):
//   E = mean over batch and voxels of sum_i [ sum_a s_iaa (D2_a u_i)^2 + 2 sum_{a<b} s_iab (D_a D_b u_i)^2 ],
// with s = scale2 (spacing factors). Each channel is one contiguous field.
template <int NDIM, typename scalar_t>
double bending_sum_by_passes(const scalar_t* u, int64_t fields, const SpatialGeometry<NDIM>& g,
                             const scalar_t scale2[NDIM][NDIM][NDIM]) {
  std::vector<scalar_t> tmp(g.numel), db(g.numel);
  double total = 0.0;
  for (int64_t f = 0; f < fields; ++f) {
    const int i = static_cast<int>(f % NDIM);
    const scalar_t* ui = u + f * g.numel;
    for (int a = 0; a < NDIM; ++a) {
      apply_stencil_pass<NDIM, scalar_t>(ui, tmp.data(), g, a, Stencil::SecondDerivative, false, 1, false);
      total += static_cast<double>(scale2[i][a][a]) * sum_of_squares(tmp.data(), g.numel);
    }
    for (int b = 1; b < NDIM; ++b) {
      apply_stencil_pass<NDIM, scalar_t>(ui, db.data(), g, b, Stencil::FirstDerivative, false, 1, false);
      for (int a = 0; a < b; ++a) {
        apply_stencil_pass<NDIM, scalar_t>(db.data(), tmp.data(), g, a, Stencil::FirstDerivative, false, 1, false);
        total += 2.0 * static_cast<double>(scale2[i][a][b]) * sum_of_squares(tmp.data(), g.numel);
      }
    }
  }
  return total;
}

// grad_i = scale * [ sum_a D2_a^T (2 s_iaa D2_a u_i) + sum_b D_b^T sum_{a<b} D_a^T (4 s_iab D_a D_b u_i) ].
template <int NDIM, typename scalar_t>
void bending_grad_by_passes(const scalar_t* u, scalar_t* grad, int64_t fields, const SpatialGeometry<NDIM>& g,
                            const scalar_t scale2[NDIM][NDIM][NDIM], scalar_t scale) {
  std::vector<scalar_t> tmp(g.numel), db(g.numel), adj(g.numel);
  for (int64_t f = 0; f < fields; ++f) {
    const int i = static_cast<int>(f % NDIM);
    const scalar_t* ui = u + f * g.numel;
    scalar_t* gi = grad + f * g.numel;
    for (int a = 0; a < NDIM; ++a) {
      apply_stencil_pass<NDIM, scalar_t>(ui, tmp.data(), g, a, Stencil::SecondDerivative, false, 1, false);
      apply_stencil_pass<NDIM, scalar_t>(tmp.data(), gi, g, a, Stencil::SecondDerivative, true,
                                         scale * scalar_t(2) * scale2[i][a][a], a > 0);
    }
    for (int b = 1; b < NDIM; ++b) {
      apply_stencil_pass<NDIM, scalar_t>(ui, db.data(), g, b, Stencil::FirstDerivative, false, 1, false);
      for (int a = 0; a < b; ++a) {
        apply_stencil_pass<NDIM, scalar_t>(db.data(), tmp.data(), g, a, Stencil::FirstDerivative, false, 1, false);
        apply_stencil_pass<NDIM, scalar_t>(tmp.data(), adj.data(), g, a, Stencil::FirstDerivative, true,
                                           scalar_t(4) * scale2[i][a][b], a > 0);
      }
      apply_stencil_pass<NDIM, scalar_t>(adj.data(), gi, g, b, Stencil::FirstDerivative, true, scale, true);
    }
  }
}

// grad_i = scale * sum_a D_a^T (2 s_ia D_a u_i), with s = scale (first-derivative spacing factors).
template <int NDIM, typename scalar_t>
void diffusion_grad_by_passes(const scalar_t* u, scalar_t* grad, int64_t fields, const SpatialGeometry<NDIM>& g,
                              const scalar_t scale1[NDIM][NDIM], scalar_t scale) {
  std::vector<scalar_t> tmp(g.numel);
  for (int64_t f = 0; f < fields; ++f) {
    const int i = static_cast<int>(f % NDIM);
    for (int a = 0; a < NDIM; ++a) {
      apply_stencil_pass<NDIM, scalar_t>(u + f * g.numel, tmp.data(), g, a, Stencil::FirstDerivative, false, 1, false);
      apply_stencil_pass<NDIM, scalar_t>(tmp.data(), grad + f * g.numel, g, a, Stencil::FirstDerivative, true,
                                         scale * scalar_t(2) * scale1[i][a], a > 0);
    }
  }
}

at::Tensor bending_energy_by_passes(const at::Tensor& u_in, const OptionalSpacing& spacing) {
  const char* op = "bending_energy";
  const int64_t ndim = check_regularizer_input(u_in, op, 3);
  const at::Tensor u = u_in.contiguous();
  at::Tensor result = at::empty({}, u.options());
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::bending_energy", [&] {
      const auto sc = make_spacing_scales<NDIM, scalar_t>(spacing, op);
      const double total = bending_sum_by_passes<NDIM, scalar_t>(u.data_ptr<scalar_t>(), u.size(0) * NDIM, g, sc.second);
      result.fill_(total / static_cast<double>(u.size(0) * g.numel));
    });
    return 0;
  });
  return result;
}

// Backward of the diffusion or bending energy: the scale of grad_output over the
// mean's count, then the passes above on every batch element and channel.
template <bool kBending>
at::Tensor smoothness_backward_by_passes(const at::Tensor& grad_output, const at::Tensor& u_in,
                                         const OptionalSpacing& spacing, const char* op) {
  const int64_t ndim = check_regularizer_input(u_in, op, kBending ? 3 : 2);
  check_scalar_grad(grad_output, u_in, op);
  const at::Tensor u = u_in.contiguous();
  at::Tensor grad = at::empty(u.sizes(), u.options());
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::smoothness_backward", [&] {
      const auto sc = make_spacing_scales<NDIM, scalar_t>(spacing, op);
      const scalar_t scale = grad_output.item<scalar_t>() / static_cast<scalar_t>(u.size(0) * g.numel);
      const int64_t fields = u.size(0) * NDIM;
      if constexpr (kBending) {
        bending_grad_by_passes<NDIM, scalar_t>(u.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), fields, g,
                                               sc.second, scale);
      } else {
        diffusion_grad_by_passes<NDIM, scalar_t>(u.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), fields, g,
                                                 sc.first, scale);
      }
    });
    return 0;
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

// Gradient of sum_q w(q) det J(q) with respect to u, for one batch element:
//   grad_i = sum_j D_j^T (w C_ij),  C = cofactors of J = d det / d J,
// the transposed first-derivative stencil applied once per field (fd_passes.h)
// instead of re-evaluating the Jacobians of every neighbour per voxel.
// Voxels with w = 0 (most of them for the folding penalty) skip their Jacobian.
template <int NDIM, typename scalar_t>
void determinant_grad_by_passes(const scalar_t* u, const scalar_t* w, scalar_t* grad, const SpatialGeometry<NDIM>& g) {
  std::vector<scalar_t> weighted(NDIM * g.numel);
  for (int j = 0; j < NDIM; ++j) {
    at::parallel_for(0, g.numel, kGrain, [&](int64_t begin, int64_t end) {
      int64_t q[NDIM];
      g.unravel(begin, q);
      for (int64_t p = begin; p < end; ++p, next_index<NDIM>(g, q)) {
        if (w[p] == scalar_t(0)) {
          for (int i = 0; i < NDIM; ++i) weighted[i * g.numel + p] = scalar_t(0);
          continue;
        }
        scalar_t J[NDIM][NDIM], C[NDIM][NDIM];
        jacobian_at<NDIM, scalar_t>(u, g, q, J);
        cofactors(J, C);
        for (int i = 0; i < NDIM; ++i) weighted[i * g.numel + p] = w[p] * C[i][j];
      }
    });
    for (int i = 0; i < NDIM; ++i) {
      apply_stencil_pass<NDIM, scalar_t>(weighted.data() + i * g.numel, grad + i * g.numel, g, j,
                                         Stencil::FirstDerivative, true, scalar_t(1), j > 0);
    }
  }
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
      for (int64_t n = 0; n < u.size(0); ++n) {
        determinant_grad_by_passes<NDIM, scalar_t>(u.data_ptr<scalar_t>() + n * NDIM * g.numel,
                                                   go.data_ptr<scalar_t>() + n * g.numel,
                                                   grad.data_ptr<scalar_t>() + n * NDIM * g.numel, g);
      }
    });
    return 0;
  });
  return grad;
}

// The folding penalty's weight is w = scale * -2 relu(tau - det J): zero
// wherever det J >= tau, and then the whole gradient is zero.
at::Tensor jacobian_penalty_backward_impl(const at::Tensor& grad_output, const at::Tensor& u_in, double threshold) {
  const char* op = "_jacobian_penalty_backward";
  const int64_t ndim = check_regularizer_input(u_in, op, 2);
  check_scalar_grad(grad_output, u_in, op);
  const at::Tensor u = u_in.contiguous();
  at::Tensor grad = at::zeros(u.sizes(), u.options());
  dispatch_ndim(ndim, [&](auto nd) {
    constexpr int NDIM = decltype(nd)::value;
    const auto g = make_geometry<NDIM>(u.sizes().slice(2));
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "itk_odereg::_jacobian_penalty_backward", [&] {
      const scalar_t scale = grad_output.item<scalar_t>() / static_cast<scalar_t>(u.size(0) * g.numel);
      const scalar_t tau = static_cast<scalar_t>(threshold);
      std::vector<scalar_t> w(g.numel);
      for (int64_t n = 0; n < u.size(0); ++n) {
        const scalar_t* un = u.data_ptr<scalar_t>() + n * NDIM * g.numel;
        const int64_t active = at::parallel_reduce(
            0, g.numel, kGrain, int64_t(0),
            [&](int64_t begin, int64_t end, int64_t count) {
              std::vector<scalar_t> det(g.size[NDIM - 1]);
              for_row_segments<NDIM, scalar_t>(un, g, begin, end, [&](int64_t p0, int64_t length, const scalar_t* d) {
                row_determinants<NDIM, scalar_t>(d, length, det.data());
                for (int64_t x = 0; x < length; ++x) {
                  const scalar_t r = tau - det[x];
                  w[p0 + x] = r > scalar_t(0) ? scale * scalar_t(-2) * r : scalar_t(0);
                  count += w[p0 + x] != scalar_t(0);
                }
              });
              return count;
            },
            std::plus<int64_t>());
        if (active == 0) continue;
        determinant_grad_by_passes<NDIM, scalar_t>(un, w.data(), grad.data_ptr<scalar_t>() + n * NDIM * g.numel, g);
      }
    });
    return 0;
  });
  return grad;
}

at::Tensor diffusion_energy_cpu(const at::Tensor& u, OptionalSpacing spacing) {
  return energy_cpu<Energy::Diffusion>(u, spacing, 0.0, "diffusion_energy");
}
at::Tensor diffusion_energy_backward_cpu(const at::Tensor& go, const at::Tensor& u, OptionalSpacing spacing) {
  return smoothness_backward_by_passes<false>(go, u, spacing, "_diffusion_energy_backward");
}
at::Tensor bending_energy_cpu(const at::Tensor& u, OptionalSpacing spacing) {
  return bending_energy_by_passes(u, spacing);
}
at::Tensor bending_energy_backward_cpu(const at::Tensor& go, const at::Tensor& u, OptionalSpacing spacing) {
  return smoothness_backward_by_passes<true>(go, u, spacing, "_bending_energy_backward");
}
at::Tensor jacobian_penalty_cpu(const at::Tensor& u, double threshold) {
  return energy_cpu<Energy::JacobianPenalty>(u, c10::nullopt, threshold, "jacobian_penalty");
}
at::Tensor jacobian_penalty_backward_cpu(const at::Tensor& go, const at::Tensor& u, double threshold) {
  return jacobian_penalty_backward_impl(go, u, threshold);
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
