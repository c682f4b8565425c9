// Interpolation weights shared by the CPU and CUDA kernels (__host__ __device__).
#pragma once

#include <cmath>

#include "geometry.h"

namespace itk_odereg {
namespace ops {

enum class Padding : int { Zeros = 0, Border = 1 };

// Linear interpolation along one axis at continuous index `x` of an axis of
// length `size`. Matches grid_sample(align_corners=True): with border padding
// the coordinate is clamped to [0, size - 1] first, and the clamp passes no
// gradient at or beyond the limits. Corners outside [0, size) get weight 0.
template <typename scalar_t>
struct LinearAxis {
  int64_t i0;         // lower corner index
  scalar_t frac;      // weight of the upper corner; 1 - frac for the lower one
  scalar_t dcoord;    // d(clamped x)/d(x): 1, or 0 where the clamp is active
  bool valid0, valid1;
};

template <typename scalar_t>
ODEREG_HOST_DEVICE LinearAxis<scalar_t> linear_axis(scalar_t x, int64_t size, Padding padding) {
  LinearAxis<scalar_t> a;
  a.dcoord = scalar_t(1);
  const scalar_t upper = static_cast<scalar_t>(size - 1);
  if (padding == Padding::Border) {
    // `!(x > 0)` also sends NaN to the lower border instead of into an
    // undefined float-to-integer conversion.
    if (!(x > scalar_t(0))) {
      x = scalar_t(0);
      a.dcoord = scalar_t(0);
    } else if (x >= upper) {
      x = upper;
      a.dcoord = scalar_t(0);
    }
  } else if (!(x >= scalar_t(-1) && x < static_cast<scalar_t>(size))) {
    // Entirely outside (or NaN): no corner contributes. x = -1 stays inside,
    // where the upper corner (index 0) still carries the derivative.
    a.i0 = -2;
    a.frac = scalar_t(0);
    a.valid0 = a.valid1 = false;
    return a;
  }
  const scalar_t fl = ::floor(x);
  a.i0 = static_cast<int64_t>(fl);
  a.frac = x - fl;
  a.valid0 = a.i0 >= 0 && a.i0 < size;
  a.valid1 = a.i0 + 1 >= 0 && a.i0 + 1 < size;
  return a;
}

// Uniform cubic B-spline basis at local coordinate u in [0, 1): the weights of
// control points i-1, i, i+1, i+2 for a sample between knots i and i+1.
template <typename scalar_t>
ODEREG_HOST_DEVICE void cubic_bspline_weights(scalar_t u, scalar_t w[4]) {
  const scalar_t one_minus_u = scalar_t(1) - u;
  const scalar_t u2 = u * u;
  const scalar_t u3 = u2 * u;
  const scalar_t sixth = scalar_t(1) / scalar_t(6);
  w[0] = one_minus_u * one_minus_u * one_minus_u * sixth;
  w[1] = (scalar_t(3) * u3 - scalar_t(6) * u2 + scalar_t(4)) * sixth;
  w[2] = (scalar_t(-3) * u3 + scalar_t(3) * u2 + scalar_t(3) * u + scalar_t(1)) * sixth;
  w[3] = u3 * sixth;
}

// Weight of dense sample x (on an axis with integer control spacing s) for
// control point x / s + a, a in 0..3. Control point k sits at voxel (k - 1) * s.
template <typename scalar_t>
ODEREG_HOST_DEVICE scalar_t cubic_bspline_weight(int64_t x, int64_t s, int a) {
  scalar_t w[4];
  cubic_bspline_weights<scalar_t>(static_cast<scalar_t>(x % s) / static_cast<scalar_t>(s), w);
  return w[a];
}

}  // namespace ops
}  // namespace itk_odereg
