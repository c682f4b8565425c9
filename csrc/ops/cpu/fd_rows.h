// First derivatives of a displacement field along a segment of one row (the last
// axis), for the CPU regularizer kernels that need every voxel's Jacobian.
//
// Why: the per-voxel formulas of common/fd_stencils.h re-derive each of the NDIM^2
// derivatives' neighbour offsets from the voxel's index (ravel, a branch per axis),
// which cost about 15 ns per voxel here and does not vectorize. Along a row the
// neighbour rows and the border case of every axis but the last are the same for
// every voxel, so each derivative is one streaming loop over the segment.
//
// Bits: every value is fd1's (common/fd_stencils.h), operation for operation: the
// interior central difference is (f[k+1] - f[k-1]) * 0.5, a border's one-sided
// difference f[k+1] - f[k] (times 1, which is exact). The density loops in
// regularizers_kernel.cpp then do the per-voxel code's arithmetic in its order, and
// its sums in double in voxel order, so the results are the per-voxel kernels' bits.
#pragma once

#include <cstdint>

#include "../common/geometry.h"
#include "vectorize.h"

namespace itk_odereg {
namespace ops {

// dst[x] = (next[x] - prev[x]) * coeff for x in [0, count).
template <typename scalar_t>
ODEREG_SIMD_CLONES void difference_rows(const scalar_t* __restrict__ next, const scalar_t* __restrict__ prev,
                                        scalar_t coeff, scalar_t* __restrict__ dst, int64_t count) {
  for (int64_t x = 0; x < count; ++x) dst[x] = (next[x] - prev[x]) * coeff;
}

// dst[x - x0] = fd1 along the row itself at x, for x in [x0, x1); `row` is the row's voxel 0.
template <typename scalar_t>
ODEREG_SIMD_CLONES void difference_along_row(const scalar_t* __restrict__ row, int64_t n, int64_t x0, int64_t x1,
                                             scalar_t* __restrict__ dst) {
  const int64_t lo = x0 > 1 ? x0 : 1, hi = x1 < n - 1 ? x1 : n - 1;
  if (x0 == 0) dst[0] = row[1] - row[0];
  for (int64_t x = lo; x < hi; ++x) dst[x - x0] = (row[x + 1] - row[x - 1]) * scalar_t(0.5);
  if (x1 == n) dst[n - 1 - x0] = row[n - 1] - row[n - 2];
}

// d[(i * NDIM + j) * count + (x - x0)] = d u_i / d x_j (voxel units, fd1) at the voxels
// x in [x0, x0 + count) of the row through `q` (q[NDIM - 1] is ignored), for one batch
// element `un` ([NDIM, *S], channel i along axis i).
template <int NDIM, typename scalar_t>
void row_first_derivatives(const scalar_t* un, const SpatialGeometry<NDIM>& g, const int64_t q[NDIM], int64_t x0,
                           int64_t count, scalar_t* d) {
  int64_t row = 0;
  for (int a = 0; a < NDIM - 1; ++a) row += q[a] * g.stride[a];
  const int64_t n = g.size[NDIM - 1];
  for (int i = 0; i < NDIM; ++i) {
    const scalar_t* ui = un + i * g.numel;
    for (int a = 0; a < NDIM - 1; ++a) {
      const int64_t k = q[a], st = g.stride[a];
      // fd1's cases in its order: the first sample, the last, the interior.
      const int64_t next = k == 0 ? st : (k == g.size[a] - 1 ? 0 : st);
      const int64_t prev = k == 0 ? 0 : -st;
      const scalar_t coeff = (k == 0 || k == g.size[a] - 1) ? scalar_t(1) : scalar_t(0.5);
      difference_rows<scalar_t>(ui + row + x0 + next, ui + row + x0 + prev, coeff, d + (i * NDIM + a) * count,
                                count);
    }
    difference_along_row<scalar_t>(ui + row, n, x0, x0 + count, d + (i * NDIM + NDIM - 1) * count);
  }
}

}  // namespace ops
}  // namespace itk_odereg
