// Finite-difference stencils of displacement fields, shared by the CPU and
// CUDA kernels (__host__ __device__).
//
// A displacement u is a contiguous [N, NDIM, *S] tensor in voxel units, with
// channel i along spatial dim i. The first derivative along an axis of length
// n uses central differences inside and one-sided differences on the border:
//   D u[0] = u[1] - u[0],  D u[n-1] = u[n-1] - u[n-2],  D u[k] = (u[k+1] - u[k-1]) / 2.
// The second derivative uses the three-point stencil, and on the border repeats
// that of the nearest interior sample:
//   D2 u[k] = u[c-1] - 2 u[c] + u[c+1],  c = clamp(k, 1, n-2).
// Backward kernels need the transposes, written here as coefficient functions
// coeff(k, m, n) = d (D u)[k] / d u[m].
#pragma once

#include "geometry.h"

namespace itk_odereg {
namespace ops {

ODEREG_HOST_DEVICE double fd1_coeff(int64_t k, int64_t m, int64_t n) {
  if (k == 0) return (m == 1) - (m == 0);
  if (k == n - 1) return (m == n - 1) - (m == n - 2);
  return 0.5 * ((m == k + 1) - (m == k - 1));
}

ODEREG_HOST_DEVICE double fd2_coeff(int64_t k, int64_t m, int64_t n) {
  const int64_t c = k < 1 ? 1 : (k > n - 2 ? n - 2 : k);
  return (m == c - 1) + (m == c + 1) - 2 * (m == c);
}

// First derivative of field f (one channel, spatial origin at f) along `dim`
// at index q, in voxel units.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE scalar_t fd1(const scalar_t* f, const SpatialGeometry<NDIM>& g,
                                const int64_t q[NDIM], int dim) {
  const int64_t n = g.size[dim];
  const int64_t k = q[dim];
  const int64_t base = g.ravel(q) - k * g.stride[dim];
  const int64_t st = g.stride[dim];
  if (k == 0) return f[base + st] - f[base];
  if (k == n - 1) return f[base + k * st] - f[base + (k - 1) * st];
  return (f[base + (k + 1) * st] - f[base + (k - 1) * st]) * scalar_t(0.5);
}

template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE scalar_t fd2(const scalar_t* f, const SpatialGeometry<NDIM>& g,
                                const int64_t q[NDIM], int dim) {
  const int64_t n = g.size[dim];
  const int64_t k = q[dim];
  const int64_t c = k < 1 ? 1 : (k > n - 2 ? n - 2 : k);
  const int64_t st = g.stride[dim];
  const int64_t base = g.ravel(q) - k * st;
  return f[base + (c - 1) * st] - scalar_t(2) * f[base + c * st] + f[base + (c + 1) * st];
}

// Mixed second derivative D_a D_b f (a != b) at q: the first-derivative
// stencil along a applied to the first derivative along b.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE scalar_t fd11(const scalar_t* f, const SpatialGeometry<NDIM>& g,
                                 const int64_t q[NDIM], int a, int b) {
  const int64_t n = g.size[a];
  const int64_t k = q[a];
  int64_t r[NDIM];
#pragma unroll
  for (int d = 0; d < NDIM; ++d) r[d] = q[d];
  scalar_t acc = scalar_t(0);
  for (int64_t m = k - 1; m <= k + 1; ++m) {
    if (m < 0 || m >= n) continue;
    const scalar_t c = static_cast<scalar_t>(fd1_coeff(k, m, n));
    if (c == scalar_t(0)) continue;
    r[a] = m;
    acc += c * fd1<NDIM, scalar_t>(f, g, r, b);
  }
  return acc;
}

// Jacobian of the map x + u(x) at q: J[i][j] = delta_ij + d u_i / d x_j
// (voxel units; invariant to voxel spacing, see jacobian_determinant).
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE void jacobian_at(const scalar_t* u, const SpatialGeometry<NDIM>& g,
                                    const int64_t q[NDIM], scalar_t J[NDIM][NDIM]) {
#pragma unroll
  for (int i = 0; i < NDIM; ++i) {
#pragma unroll
    for (int j = 0; j < NDIM; ++j) {
      J[i][j] = fd1<NDIM, scalar_t>(u + i * g.numel, g, q, j) + (i == j ? scalar_t(1) : scalar_t(0));
    }
  }
}

template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t determinant(const scalar_t J[2][2]) {
  return J[0][0] * J[1][1] - J[0][1] * J[1][0];
}

template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t determinant(const scalar_t J[3][3]) {
  return J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1]) -
         J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0]) +
         J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0]);
}

// Cofactors C[i][j] = d det(J) / d J[i][j].
template <typename scalar_t>
ODEREG_HOST_DEVICE void cofactors(const scalar_t J[2][2], scalar_t C[2][2]) {
  C[0][0] = J[1][1];
  C[0][1] = -J[1][0];
  C[1][0] = -J[0][1];
  C[1][1] = J[0][0];
}

template <typename scalar_t>
ODEREG_HOST_DEVICE void cofactors(const scalar_t J[3][3], scalar_t C[3][3]) {
  C[0][0] = J[1][1] * J[2][2] - J[1][2] * J[2][1];
  C[0][1] = J[1][2] * J[2][0] - J[1][0] * J[2][2];
  C[0][2] = J[1][0] * J[2][1] - J[1][1] * J[2][0];
  C[1][0] = J[0][2] * J[2][1] - J[0][1] * J[2][2];
  C[1][1] = J[0][0] * J[2][2] - J[0][2] * J[2][0];
  C[1][2] = J[0][1] * J[2][0] - J[0][0] * J[2][1];
  C[2][0] = J[0][1] * J[1][2] - J[0][2] * J[1][1];
  C[2][1] = J[0][2] * J[1][0] - J[0][0] * J[1][2];
  C[2][2] = J[0][0] * J[1][1] - J[0][1] * J[1][0];
}

// Per-voxel energy densities. `scale[i][j]` holds the squared spacing factors
// (h_i / h_j)^2 (diffusion) and `scale2[i][a][b]` = (h_i / (h_a h_b))^2
// (bending), so physical spacing costs nothing inside the loops.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE scalar_t diffusion_density(const scalar_t* u, const SpatialGeometry<NDIM>& g,
                                              const int64_t q[NDIM], const scalar_t scale[NDIM][NDIM]) {
  scalar_t acc = scalar_t(0);
#pragma unroll
  for (int i = 0; i < NDIM; ++i) {
#pragma unroll
    for (int j = 0; j < NDIM; ++j) {
      const scalar_t d = fd1<NDIM, scalar_t>(u + i * g.numel, g, q, j);
      acc += scale[i][j] * d * d;
    }
  }
  return acc;
}

// Bending density: sum_i sum_{a,b} (d^2 u_i / dx_a dx_b)^2, mixed terms twice.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE scalar_t bending_density(const scalar_t* u, const SpatialGeometry<NDIM>& g,
                                            const int64_t q[NDIM], const scalar_t scale2[NDIM][NDIM][NDIM]) {
  scalar_t acc = scalar_t(0);
#pragma unroll
  for (int i = 0; i < NDIM; ++i) {
    const scalar_t* ui = u + i * g.numel;
#pragma unroll
    for (int a = 0; a < NDIM; ++a) {
      const scalar_t d = fd2<NDIM, scalar_t>(ui, g, q, a);
      acc += scale2[i][a][a] * d * d;
#pragma unroll
      for (int b = a + 1; b < NDIM; ++b) {
        const scalar_t m = fd11<NDIM, scalar_t>(ui, g, q, a, b);
        acc += scalar_t(2) * scale2[i][a][b] * m * m;
      }
    }
  }
  return acc;
}

// Gradient of sum_q diffusion_density(q) w.r.t. u_i at voxel m (all channels):
// 2 sum_j scale[i][j] sum_q D_j[q, m] (D_j u_i)(q).
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE void diffusion_grad_at(const scalar_t* u, const SpatialGeometry<NDIM>& g,
                                          const int64_t m[NDIM], const scalar_t scale[NDIM][NDIM],
                                          scalar_t grad[NDIM]) {
  int64_t q[NDIM];
#pragma unroll
  for (int d = 0; d < NDIM; ++d) q[d] = m[d];
#pragma unroll
  for (int i = 0; i < NDIM; ++i) grad[i] = scalar_t(0);
#pragma unroll
  for (int j = 0; j < NDIM; ++j) {
    const int64_t n = g.size[j];
    for (int64_t k = m[j] - 1; k <= m[j] + 1; ++k) {
      if (k < 0 || k >= n) continue;
      const scalar_t c = static_cast<scalar_t>(fd1_coeff(k, m[j], n));
      if (c == scalar_t(0)) continue;
      q[j] = k;
#pragma unroll
      for (int i = 0; i < NDIM; ++i) {
        grad[i] += scalar_t(2) * scale[i][j] * c * fd1<NDIM, scalar_t>(u + i * g.numel, g, q, j);
      }
    }
    q[j] = m[j];
  }
}

// Gradient of sum_q bending_density(q) w.r.t. u_i at voxel m.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE void bending_grad_at(const scalar_t* u, const SpatialGeometry<NDIM>& g,
                                        const int64_t m[NDIM], const scalar_t scale2[NDIM][NDIM][NDIM],
                                        scalar_t grad[NDIM]) {
  int64_t q[NDIM];
#pragma unroll
  for (int d = 0; d < NDIM; ++d) q[d] = m[d];
#pragma unroll
  for (int i = 0; i < NDIM; ++i) grad[i] = scalar_t(0);
#pragma unroll
  for (int a = 0; a < NDIM; ++a) {
    const int64_t na = g.size[a];
    // Pure second derivatives: D2_a[k, m] is non-zero for |k - m| <= 2.
    for (int64_t k = m[a] - 2; k <= m[a] + 2; ++k) {
      if (k < 0 || k >= na) continue;
      const scalar_t c = static_cast<scalar_t>(fd2_coeff(k, m[a], na));
      if (c == scalar_t(0)) continue;
      q[a] = k;
#pragma unroll
      for (int i = 0; i < NDIM; ++i) {
        grad[i] += scalar_t(2) * scale2[i][a][a] * c * fd2<NDIM, scalar_t>(u + i * g.numel, g, q, a);
      }
    }
    q[a] = m[a];
    // Mixed derivatives: (D_a D_b)[k, m] = D_a[k_a, m_a] D_b[k_b, m_b].
#pragma unroll
    for (int b = a + 1; b < NDIM; ++b) {
      const int64_t nb = g.size[b];
      for (int64_t ka = m[a] - 1; ka <= m[a] + 1; ++ka) {
        if (ka < 0 || ka >= na) continue;
        const scalar_t ca = static_cast<scalar_t>(fd1_coeff(ka, m[a], na));
        if (ca == scalar_t(0)) continue;
        for (int64_t kb = m[b] - 1; kb <= m[b] + 1; ++kb) {
          if (kb < 0 || kb >= nb) continue;
          const scalar_t cb = static_cast<scalar_t>(fd1_coeff(kb, m[b], nb));
          if (cb == scalar_t(0)) continue;
          q[a] = ka;
          q[b] = kb;
#pragma unroll
          for (int i = 0; i < NDIM; ++i) {
            grad[i] += scalar_t(4) * scale2[i][a][b] * ca * cb * fd11<NDIM, scalar_t>(u + i * g.numel, g, q, a, b);
          }
        }
      }
      q[a] = m[a];
      q[b] = m[b];
    }
  }
}

// Gradient of sum_q w(q) det J(q) w.r.t. u_i at voxel m, where the per-voxel
// weight w(q) comes from `weight(q_linear, det, J)` (grad_output for
// jacobian_determinant, -2 relu(tau - det) for jacobian_penalty).
template <int NDIM, typename scalar_t, typename WeightFn>
ODEREG_HOST_DEVICE void determinant_grad_at(const scalar_t* u, const SpatialGeometry<NDIM>& g,
                                            const int64_t m[NDIM], const WeightFn& weight,
                                            scalar_t grad[NDIM]) {
  int64_t q[NDIM];
#pragma unroll
  for (int d = 0; d < NDIM; ++d) q[d] = m[d];
#pragma unroll
  for (int i = 0; i < NDIM; ++i) grad[i] = scalar_t(0);
#pragma unroll
  for (int j = 0; j < NDIM; ++j) {
    const int64_t n = g.size[j];
    for (int64_t k = m[j] - 1; k <= m[j] + 1; ++k) {
      if (k < 0 || k >= n) continue;
      const scalar_t c = static_cast<scalar_t>(fd1_coeff(k, m[j], n));
      if (c == scalar_t(0)) continue;
      q[j] = k;
      scalar_t J[NDIM][NDIM];
      jacobian_at<NDIM, scalar_t>(u, g, q, J);
      const scalar_t w = weight(g.ravel(q), determinant(J));
      if (w == scalar_t(0)) continue;
      scalar_t C[NDIM][NDIM];
      cofactors(J, C);
#pragma unroll
      for (int i = 0; i < NDIM; ++i) grad[i] += w * c * C[i][j];
    }
    q[j] = m[j];
  }
}

}  // namespace ops
}  // namespace itk_odereg
