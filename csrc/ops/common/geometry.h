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

}  // namespace ops
}  // namespace itk_odereg
