// Launch helpers for the CUDA kernels. Light headers only: these files must
// also compile in CI against a CPU-only torch with nvcc.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace itk_odereg {
namespace ops {

#define ODEREG_CUDA_1D_KERNEL_LOOP(i, n)                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);        \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

constexpr int kThreadsPerBlock = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Enough blocks to cover n, capped: the grid-stride loop handles the rest.
inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreadsPerBlock), 65535L * 8)));
}

inline void check_cuda_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "itk_odereg.", op, "(): '", name, "' must be a CUDA tensor, got device ", t.device());
}

}  // namespace ops
}  // namespace itk_odereg
