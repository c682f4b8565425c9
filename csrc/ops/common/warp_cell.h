// The fast path of the warp op: sample positions whose whole interpolation
// cell (all 2^NDIM corners) lies inside the image. That is nearly every voxel
// of a registration, and there the general per-corner validity tests, the
// clamp and the floor() call are all unnecessary. Shared by the CPU and CUDA
// kernels (__host__ __device__); `warp_voxel.h` keeps the general path, which
// these must agree with wherever both apply.
#pragma once

#include "geometry.h"
#include "interp_weights.h"

namespace itk_odereg {
namespace ops {

// A cell whose corners are all inside: `base` is the offset of its lower
// corner, `frac[d]` the position inside it along dim d, in [0, 1).
template <int NDIM, typename scalar_t>
struct InteriorCell {
  int64_t base;
  scalar_t frac[NDIM];
};

// Locates sample position index + u inside an interior cell, or returns false
// (the caller then takes the general path). The open/closed ends follow
// `linear_axis`: with border padding, x == 0 is a clamped point (no
// gradient), so only x > 0 counts as interior; with zero padding x == 0 is an
// ordinary point. x == size - 1 needs the missing upper corner either way.
// NaN fails every comparison and so also goes to the general path.
// `index` and the displacement live on w.out; the cell is one of w.image's.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE bool locate_interior_cell(const scalar_t* disp_n, const WarpGrids<NDIM, scalar_t>& w, int64_t p,
                                             const int64_t index[NDIM], Padding padding,
                                             InteriorCell<NDIM, scalar_t>& cell) {
  cell.base = 0;
#pragma unroll
  for (int d = 0; d < NDIM; ++d) {
    const scalar_t x = (static_cast<scalar_t>(index[d]) + disp_n[d * w.out.numel + p]) * w.scale[d];
    const bool above_lower = padding == Padding::Border ? x > scalar_t(0) : x >= scalar_t(0);
    if (!(above_lower && x < static_cast<scalar_t>(w.image.size[d] - 1))) return false;
    // x >= 0 here, so truncation is floor (and avoids a libm call on CPUs without SSE4.1).
    const int64_t i0 = static_cast<int64_t>(x);
    cell.base += i0 * w.image.stride[d];
    cell.frac[d] = x - static_cast<scalar_t>(i0);
  }
  return true;
}

template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t lerp(scalar_t a, scalar_t b, scalar_t t) {
  return a + t * (b - a);
}

// Interpolated value of one channel (image_c points at its voxel 0).
template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t interior_sample(const scalar_t* image_c, const InteriorCell<3, scalar_t>& cell,
                                            const SpatialGeometry<3>& g) {
  const scalar_t* v = image_c + cell.base;
  const int64_t sy = g.stride[1], sz = g.stride[0];
  const scalar_t fz = cell.frac[0], fy = cell.frac[1], fx = cell.frac[2];
  const scalar_t c00 = lerp(v[0], v[1], fx), c01 = lerp(v[sy], v[sy + 1], fx);
  const scalar_t c10 = lerp(v[sz], v[sz + 1], fx), c11 = lerp(v[sz + sy], v[sz + sy + 1], fx);
  return lerp(lerp(c00, c01, fy), lerp(c10, c11, fy), fz);
}

template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t interior_sample(const scalar_t* image_c, const InteriorCell<2, scalar_t>& cell,
                                            const SpatialGeometry<2>& g) {
  const scalar_t* v = image_c + cell.base;
  const int64_t sy = g.stride[0];
  const scalar_t fy = cell.frac[0], fx = cell.frac[1];
  return lerp(lerp(v[0], v[1], fx), lerp(v[sy], v[sy + 1], fx), fy);
}

// Backward of one channel at an interior cell, given the upstream gradient
// `go` of the output voxel: scatters go * corner weight through
// `scatter(offset, channel, value)` (when `need_image`) and adds go * d(value)/d(x_d)
// to gdisp[d] (when `need_disp`; x in voxels, tensor dim order).
template <typename scalar_t, typename Scatter>
ODEREG_HOST_DEVICE void interior_backward(const scalar_t* image_c, const InteriorCell<3, scalar_t>& cell,
                                          const SpatialGeometry<3>& g, int64_t ch, scalar_t go, bool need_image, bool need_disp,
                                          const Scatter& scatter, scalar_t gdisp[3]) {
  const int64_t sy = g.stride[1], sz = g.stride[0], b = cell.base;
  const scalar_t fz = cell.frac[0], fy = cell.frac[1], fx = cell.frac[2];
  if (need_image) {
    const scalar_t g0 = go * (scalar_t(1) - fz), g1 = go * fz;
    const scalar_t g00 = g0 * (scalar_t(1) - fy), g01 = g0 * fy, g10 = g1 * (scalar_t(1) - fy), g11 = g1 * fy;
    const scalar_t wx0 = scalar_t(1) - fx;
    scatter(b, ch, g00 * wx0);
    scatter(b + 1, ch, g00 * fx);
    scatter(b + sy, ch, g01 * wx0);
    scatter(b + sy + 1, ch, g01 * fx);
    scatter(b + sz, ch, g10 * wx0);
    scatter(b + sz + 1, ch, g10 * fx);
    scatter(b + sz + sy, ch, g11 * wx0);
    scatter(b + sz + sy + 1, ch, g11 * fx);
  }
  if (need_disp) {
    const scalar_t* v = image_c + b;
    const scalar_t v000 = v[0], v001 = v[1], v010 = v[sy], v011 = v[sy + 1];
    const scalar_t v100 = v[sz], v101 = v[sz + 1], v110 = v[sz + sy], v111 = v[sz + sy + 1];
    const scalar_t e00 = v001 - v000, e01 = v011 - v010, e10 = v101 - v100, e11 = v111 - v110;
    const scalar_t c00 = v000 + fx * e00, c01 = v010 + fx * e01, c10 = v100 + fx * e10, c11 = v110 + fx * e11;
    gdisp[2] += go * lerp(lerp(e00, e01, fy), lerp(e10, e11, fy), fz);
    gdisp[1] += go * lerp(c01 - c00, c11 - c10, fz);
    gdisp[0] += go * (lerp(c10, c11, fy) - lerp(c00, c01, fy));
  }
}

template <typename scalar_t, typename Scatter>
ODEREG_HOST_DEVICE void interior_backward(const scalar_t* image_c, const InteriorCell<2, scalar_t>& cell,
                                          const SpatialGeometry<2>& g, int64_t ch, scalar_t go, bool need_image, bool need_disp,
                                          const Scatter& scatter, scalar_t gdisp[2]) {
  const int64_t sy = g.stride[0], b = cell.base;
  const scalar_t fy = cell.frac[0], fx = cell.frac[1];
  if (need_image) {
    const scalar_t g0 = go * (scalar_t(1) - fy), g1 = go * fy, wx0 = scalar_t(1) - fx;
    scatter(b, ch, g0 * wx0);
    scatter(b + 1, ch, g0 * fx);
    scatter(b + sy, ch, g1 * wx0);
    scatter(b + sy + 1, ch, g1 * fx);
  }
  if (need_disp) {
    const scalar_t* v = image_c + b;
    const scalar_t e0 = v[1] - v[0], e1 = v[sy + 1] - v[sy];
    gdisp[1] += go * lerp(e0, e1, fy);
    gdisp[0] += go * ((v[sy] + fx * e1) - (v[0] + fx * e0));
  }
}

}  // namespace ops
}  // namespace itk_odereg
