// Whole-field finite-difference passes for the CPU regularizer kernels.
//
// The per-voxel formulas in common/fd_stencils.h (used by the CUDA kernels)
// recompute every derivative a voxel's gradient depends on; for the bending
// energy that is hundreds of stencil evaluations per voxel. On the CPU it is
// cheaper to apply each derivative, and each transpose, once to a whole field
// as a separable pass along one axis. The passes take their coefficients from
// fd1_coeff / fd2_coeff, the same definitions the per-voxel formulas use.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/fd_stencils.h"
#include "vectorize.h"

namespace itk_odereg {
namespace ops {

enum class Stencil { FirstDerivative, SecondDerivative };

// Row r of a 1D stencil matrix on an axis of length n (or of its transpose):
// the source rows it reads and their coefficients. Rows of D1 and D2 and of
// their transposes touch at most 5 neighbours (|k - m| <= 2).
template <typename scalar_t>
struct StencilRow {
  int count = 0;
  int64_t source[5];
  scalar_t coeff[5];
};

template <typename scalar_t>
std::vector<StencilRow<scalar_t>> stencil_rows(Stencil stencil, int64_t n, bool transpose) {
  std::vector<StencilRow<scalar_t>> rows(n);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t t = std::max<int64_t>(0, r - 2); t <= std::min<int64_t>(n - 1, r + 2); ++t) {
      const int64_t k = transpose ? t : r, m = transpose ? r : t;
      const double c = stencil == Stencil::FirstDerivative ? fd1_coeff(k, m, n) : fd2_coeff(k, m, n);
      if (c == 0.0) continue;
      rows[r].source[rows[r].count] = t;
      rows[r].coeff[rows[r].count] = static_cast<scalar_t>(c);
      ++rows[r].count;
    }
  }
  return rows;
}

// dst[i] (+)= sum_j coeff[j] * src_j[i] over `count` source rows.
template <typename scalar_t>
ODEREG_SIMD_CLONES void combine_rows(scalar_t* __restrict__ dst, const scalar_t* const* src, const scalar_t* coeff,
                                     int count, int64_t width, bool accumulate) {
  const scalar_t z = scalar_t(0);
  const scalar_t c0 = coeff[0], c1 = count > 1 ? coeff[1] : z, c2 = count > 2 ? coeff[2] : z;
  const scalar_t* __restrict__ s0 = src[0];
  const scalar_t* __restrict__ s1 = count > 1 ? src[1] : src[0];
  const scalar_t* __restrict__ s2 = count > 2 ? src[2] : src[0];
  if (count <= 3) {
    if (accumulate) {
      for (int64_t i = 0; i < width; ++i) dst[i] += c0 * s0[i] + c1 * s1[i] + c2 * s2[i];
    } else {
      for (int64_t i = 0; i < width; ++i) dst[i] = c0 * s0[i] + c1 * s1[i] + c2 * s2[i];
    }
    return;
  }
  const scalar_t c3 = coeff[3], c4 = count > 4 ? coeff[4] : z;
  const scalar_t* __restrict__ s3 = src[3];
  const scalar_t* __restrict__ s4 = count > 4 ? src[4] : src[0];
  if (accumulate) {
    for (int64_t i = 0; i < width; ++i) dst[i] += c0 * s0[i] + c1 * s1[i] + c2 * s2[i] + c3 * s3[i] + c4 * s4[i];
  } else {
    for (int64_t i = 0; i < width; ++i) dst[i] = c0 * s0[i] + c1 * s1[i] + c2 * s2[i] + c3 * s3[i] + c4 * s4[i];
  }
}

// One pass along `axis` of a contiguous single-channel field of spatial size
// `size`: dst (+)= alpha * S src, with S the stencil matrix or its transpose
// acting on that axis. dst must not alias src.
template <int NDIM, typename scalar_t>
void apply_stencil_pass(const scalar_t* src, scalar_t* dst, const SpatialGeometry<NDIM>& g, int axis, Stencil stencil,
                        bool transpose, scalar_t alpha, bool accumulate) {
  const int64_t n = g.size[axis], inner = g.stride[axis], outer = g.numel / (n * inner);
  std::vector<StencilRow<scalar_t>> rows = stencil_rows<scalar_t>(stencil, n, transpose);
  for (auto& row : rows) {
    for (int j = 0; j < row.count; ++j) row.coeff[j] *= alpha;
  }
  if (inner == 1) {
    // The last axis: lines are contiguous; taps read neighbouring elements.
    at::parallel_for(0, outer, std::max<int64_t>(1, 8192 / n), [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const scalar_t* s = src + o * n;
        scalar_t* d = dst + o * n;
        for (int64_t r = 0; r < n; ++r) {
          const StencilRow<scalar_t>& row = rows[r];
          scalar_t acc = accumulate ? d[r] : scalar_t(0);
          for (int j = 0; j < row.count; ++j) acc += row.coeff[j] * s[row.source[j]];
          d[r] = acc;
        }
      }
    });
    return;
  }
  at::parallel_for(0, outer * n, std::max<int64_t>(1, 16384 / inner), [&](int64_t begin, int64_t end) {
    const scalar_t* sources[5];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o = task / n, r = task % n;
      const StencilRow<scalar_t>& row = rows[r];
      for (int j = 0; j < row.count; ++j) sources[j] = src + (o * n + row.source[j]) * inner;
      combine_rows<scalar_t>(dst + (o * n + r) * inner, sources, row.coeff, row.count, inner, accumulate);
    }
  });
}

// sum_i f[i]^2 in double, deterministic for a given size (fixed chunking).
template <typename scalar_t>
double sum_of_squares(const scalar_t* f, int64_t count) {
  return at::parallel_reduce(
      0, count, 32768, 0.0,
      [&](int64_t begin, int64_t end, double acc) {
        // Blocks summed in scalar_t, then widened: vectorizable and still accurate.
        for (int64_t b = begin; b < end; b += 1024) {
          scalar_t block = scalar_t(0);
          const int64_t e = std::min(end, b + 1024);
          for (int64_t i = b; i < e; ++i) block += f[i] * f[i];
          acc += static_cast<double>(block);
        }
        return acc;
      },
      std::plus<double>());
}

}  // namespace ops
}  // namespace itk_odereg
