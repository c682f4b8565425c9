// Shared by the CPU and CUDA kernels: index arithmetic for contiguous
// [N, C, *S] tensors with NDIM spatial dimensions (tensor order: z, y, x).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ODEREG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ODEREG_HOST_DEVICE inline
#endif

namespace itk_odereg {
namespace ops {

// Sizes and contiguous strides of the spatial part of a tensor. Passed by
// value to CUDA kernels, so it must stay a trivially copyable aggregate.
template <int NDIM>
struct SpatialGeometry {
  int64_t size[NDIM];
  int64_t stride[NDIM];
  int64_t numel;

  ODEREG_HOST_DEVICE void unravel(int64_t linear, int64_t index[NDIM]) const {
#pragma unroll
    for (int d = NDIM - 1; d >= 0; --d) {
      index[d] = linear % size[d];
      linear /= size[d];
    }
  }

  ODEREG_HOST_DEVICE int64_t ravel(const int64_t index[NDIM]) const {
    int64_t linear = 0;
#pragma unroll
    for (int d = 0; d < NDIM; ++d) {
      linear += index[d] * stride[d];
    }
    return linear;
  }
};

// Advances a voxel position in C order (last dim fastest), like an odometer.
template <int NDIM>
ODEREG_HOST_DEVICE void next_index(const SpatialGeometry<NDIM>& g, int64_t index[NDIM]) {
#pragma unroll
  for (int d = NDIM - 1; d >= 0; --d) {
    if (++index[d] < g.size[d]) return;
    index[d] = 0;
  }
}

template <int NDIM, typename SizeArray>
inline SpatialGeometry<NDIM> make_geometry(const SizeArray& spatial_sizes) {
  SpatialGeometry<NDIM> g{};
  int64_t stride = 1;
  for (int d = NDIM - 1; d >= 0; --d) {
    g.size[d] = static_cast<int64_t>(spatial_sizes[d]);
    g.stride[d] = stride;
    stride *= g.size[d];
  }
  g.numel = stride;
  return g;
}

// The two grids of a warp: the displacement's (which is also the output's) and
// the sampled image's. Both are corner-aligned over the same box, so output
// index i + u maps to image index (i + u) * scale. scale[d] is
// (image size - 1) / (output size - 1), and exactly 1 where the sizes agree,
// which keeps the plain same-grid warp bit for bit what it was. Passed by
// value to CUDA kernels, so it must stay a trivially copyable aggregate.
template <int NDIM, typename scalar_t>
struct WarpGrids {
  SpatialGeometry<NDIM> out;
  SpatialGeometry<NDIM> image;
  scalar_t scale[NDIM];
};

// Callers have checked that every axis either has the same size on both grids,
// or at least 2 samples on each (a single sample has no corner-aligned extent).
template <int NDIM, typename scalar_t, typename SizeArray>
inline WarpGrids<NDIM, scalar_t> make_warp_grids(const SizeArray& image_sizes, const SizeArray& out_sizes) {
  WarpGrids<NDIM, scalar_t> w{};
  w.image = make_geometry<NDIM>(image_sizes);
  w.out = make_geometry<NDIM>(out_sizes);
  for (int d = 0; d < NDIM; ++d) {
    w.scale[d] = w.image.size[d] == w.out.size[d]
                     ? scalar_t(1)
                     : static_cast<scalar_t>(static_cast<double>(w.image.size[d] - 1) /
                                             static_cast<double>(w.out.size[d] - 1));
  }
  return w;
}

}  // namespace ops
}  // namespace itk_odereg
