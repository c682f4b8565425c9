// Per-voxel bodies of the warp op, shared by the CPU and CUDA kernels. The
// kernels call warp_forward_point / warp_backward_point (bottom of the file).
#pragma once

#include "geometry.h"
#include "interp_weights.h"
#include "warp_cell.h"

namespace itk_odereg {
namespace ops {

// Corner c of the 2^NDIM interpolation cell: bit d of c selects the upper
// corner along dim d. Returns false when the corner lies outside the image.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE bool corner(const LinearAxis<scalar_t> axes[NDIM], const SpatialGeometry<NDIM>& g, int c,
                               int64_t& offset, scalar_t& weight) {
  offset = 0;
  weight = scalar_t(1);
#pragma unroll
  for (int d = 0; d < NDIM; ++d) {
    const bool upper = (c >> d) & 1;
    if (!(upper ? axes[d].valid1 : axes[d].valid0)) return false;
    offset += (axes[d].i0 + (upper ? 1 : 0)) * g.stride[d];
    weight *= upper ? axes[d].frac : scalar_t(1) - axes[d].frac;
  }
  return true;
}

// `index` is the unravelled voxel position of linear offset p on w.out (callers
// that walk voxels in order keep it incrementally, avoiding divisions); the
// axes are w.image's.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE void sample_axes(const scalar_t* disp_n, const WarpGrids<NDIM, scalar_t>& w, int64_t p,
                                    const int64_t index[NDIM], Padding padding, LinearAxis<scalar_t> axes[NDIM]) {
#pragma unroll
  for (int d = 0; d < NDIM; ++d) {
    const scalar_t x = (static_cast<scalar_t>(index[d]) + disp_n[d * w.out.numel + p]) * w.scale[d];
    axes[d] = linear_axis<scalar_t>(x, w.image.size[d], padding);
  }
}

// out[n, :, p] for one batch element: image_n and out_n point at channel 0.
// Corner offsets and weights are computed once, then every channel
// accumulates in a register (no aliasing stores to the output inside the loop).
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE void warp_forward_voxel(const scalar_t* __restrict__ image_n, const scalar_t* disp_n,
                                           scalar_t* __restrict__ out_n, const WarpGrids<NDIM, scalar_t>& w,
                                           int64_t channels, int64_t p, const int64_t index[NDIM], Padding padding) {
  LinearAxis<scalar_t> axes[NDIM];
  sample_axes<NDIM, scalar_t>(disp_n, w, p, index, padding, axes);
  constexpr int kCorners = 1 << NDIM;
  int64_t offsets[kCorners];
  scalar_t weights[kCorners];
  int count = 0;
#pragma unroll
  for (int c = 0; c < kCorners; ++c) {
    int64_t offset;
    scalar_t weight;
    if (corner<NDIM, scalar_t>(axes, w.image, c, offset, weight)) {
      offsets[count] = offset;
      weights[count] = weight;
      ++count;
    }
  }
  for (int64_t ch = 0; ch < channels; ++ch) {
    const scalar_t* image_c = image_n + ch * w.image.numel;
    scalar_t acc = scalar_t(0);
    for (int k = 0; k < count; ++k) acc += weights[k] * image_c[offsets[k]];
    out_n[ch * w.out.numel + p] = acc;
  }
}

// Both gradients of one output voxel in a single pass. The displacement
// gradient is written in place; the image gradient is scattered through
// `scatter(offset_of_channel0_voxel, channel, value)` (offsets on w.image),
// which the CPU kernel routes to a per-thread buffer and the CUDA kernel to
// atomicAdd.
template <int NDIM, typename scalar_t, typename Scatter>
ODEREG_HOST_DEVICE void warp_backward_voxel(const scalar_t* grad_out_n, const scalar_t* image_n,
                                            const scalar_t* disp_n, scalar_t* grad_disp_n,
                                            const WarpGrids<NDIM, scalar_t>& w, int64_t channels, int64_t p,
                                            const int64_t index[NDIM], Padding padding, bool need_image,
                                            bool need_disp, const Scatter& scatter) {
  LinearAxis<scalar_t> axes[NDIM];
  sample_axes<NDIM, scalar_t>(disp_n, w, p, index, padding, axes);
  scalar_t gdisp[NDIM];
#pragma unroll
  for (int d = 0; d < NDIM; ++d) gdisp[d] = scalar_t(0);
#pragma unroll
  for (int c = 0; c < (1 << NDIM); ++c) {
    int64_t offset;
    scalar_t weight;
    if (!corner<NDIM, scalar_t>(axes, w.image, c, offset, weight)) continue;
    scalar_t dot = scalar_t(0);  // sum_ch image[ch, corner] * grad_out[ch, p]
    for (int64_t ch = 0; ch < channels; ++ch) {
      const scalar_t go = grad_out_n[ch * w.out.numel + p];
      if (need_image) scatter(offset, ch, weight * go);
      if (need_disp) dot += image_n[ch * w.image.numel + offset] * go;
    }
    if (!need_disp) continue;
#pragma unroll
    for (int d = 0; d < NDIM; ++d) {
      // d weight / d x_d: the other axes' weights times +1 (upper) or -1 (lower).
      scalar_t dw = ((c >> d) & 1) ? scalar_t(1) : scalar_t(-1);
#pragma unroll
      for (int e = 0; e < NDIM; ++e) {
        if (e == d) continue;
        dw *= ((c >> e) & 1) ? axes[e].frac : scalar_t(1) - axes[e].frac;
      }
      gdisp[d] += dw * dot;
    }
  }
  if (need_disp) {
#pragma unroll
    for (int d = 0; d < NDIM; ++d) grad_disp_n[d * w.out.numel + p] = gdisp[d] * axes[d].dcoord * w.scale[d];
  }
}

// The kernels' entry points: the interior fast path where the whole cell is
// inside the image, the general per-corner path elsewhere.
template <int NDIM, typename scalar_t>
ODEREG_HOST_DEVICE void warp_forward_point(const scalar_t* __restrict__ image_n, const scalar_t* disp_n,
                                           scalar_t* __restrict__ out_n, const WarpGrids<NDIM, scalar_t>& w,
                                           int64_t channels, int64_t p, const int64_t index[NDIM], Padding padding) {
  InteriorCell<NDIM, scalar_t> cell;
  if (locate_interior_cell<NDIM, scalar_t>(disp_n, w, p, index, padding, cell)) {
    for (int64_t ch = 0; ch < channels; ++ch) {
      out_n[ch * w.out.numel + p] = interior_sample(image_n + ch * w.image.numel, cell, w.image);
    }
    return;
  }
  warp_forward_voxel<NDIM, scalar_t>(image_n, disp_n, out_n, w, channels, p, index, padding);
}

template <int NDIM, typename scalar_t, typename Scatter>
ODEREG_HOST_DEVICE void warp_backward_point(const scalar_t* grad_out_n, const scalar_t* image_n,
                                            const scalar_t* disp_n, scalar_t* grad_disp_n,
                                            const WarpGrids<NDIM, scalar_t>& w, int64_t channels, int64_t p,
                                            const int64_t index[NDIM], Padding padding, bool need_image,
                                            bool need_disp, const Scatter& scatter) {
  InteriorCell<NDIM, scalar_t> cell;
  if (locate_interior_cell<NDIM, scalar_t>(disp_n, w, p, index, padding, cell)) {
    scalar_t gdisp[NDIM];
#pragma unroll
    for (int d = 0; d < NDIM; ++d) gdisp[d] = scalar_t(0);
    for (int64_t ch = 0; ch < channels; ++ch) {
      interior_backward(image_n + ch * w.image.numel, cell, w.image, ch, grad_out_n[ch * w.out.numel + p], need_image,
                        need_disp, scatter, gdisp);
    }
    if (need_disp) {
#pragma unroll
      for (int d = 0; d < NDIM; ++d) grad_disp_n[d * w.out.numel + p] = gdisp[d] * w.scale[d];
    }
    return;
  }
  warp_backward_voxel<NDIM, scalar_t>(grad_out_n, image_n, disp_n, grad_disp_n, w, channels, p, index, padding,
                                      need_image, need_disp, scatter);
}

}  // namespace ops
}  // namespace itk_odereg
