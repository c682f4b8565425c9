// CUDA kernels of itk_odereg::tanh_mlp and its backward: one thread per point,
// every layer's activations of that point in registers or local memory. The
// backward writes each layer's input and its pre-activation gradient to scratch,
// and the parameter gradients are then sums over points (G A^T and row sums),
// left to cuBLAS and torch's reductions: no atomics, the same sums on every run.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <vector>

#include "../common/tanh_mlp.h"
#include "cuda_helpers.h"

namespace itk_odereg {
namespace ops {

namespace {

// Passed by value to the kernels: device pointers of the contiguous parameters.
template <typename scalar_t>
struct DeviceNetwork {
  const scalar_t* w[kTanhMlpMaxLayers];
  const scalar_t* b[kTanhMlpMaxLayers];
  int64_t width[kTanhMlpMaxLayers + 1];
  int64_t layers;
};

template <typename scalar_t>
DeviceNetwork<scalar_t> device_network(const at::Tensor& input, const std::vector<at::Tensor>& weights,
                                       const std::vector<at::Tensor>& biases) {
  DeviceNetwork<scalar_t> net{};
  net.layers = static_cast<int64_t>(weights.size());
  net.width[0] = input.size(0);
  for (int64_t l = 0; l < net.layers; ++l) {
    net.w[l] = weights[l].template data_ptr<scalar_t>();
    net.b[l] = biases[l].template data_ptr<scalar_t>();
    net.width[l + 1] = weights[l].size(0);
  }
  return net;
}

std::vector<at::Tensor> contiguous_all(at::TensorList list) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : list) out.push_back(t.contiguous());
  return out;
}

template <typename scalar_t>
__device__ void dense_tanh_point(const DeviceNetwork<scalar_t>& net, int64_t l, const scalar_t* in, scalar_t* out) {
  const int64_t cin = net.width[l], cout = net.width[l + 1];
  for (int64_t j = 0; j < cout; ++j) {
    scalar_t z = net.b[l][j];
    for (int64_t c = 0; c < cin; ++c) z += net.w[l][j * cin + c] * in[c];
    out[j] = tanh_of(z);
  }
}

template <typename scalar_t>
__global__ void tanh_mlp_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ output,
                                DeviceNetwork<scalar_t> net, int64_t points) {
  ODEREG_CUDA_1D_KERNEL_LOOP(n, points) {
    scalar_t a[kTanhMlpMaxChannels], z[kTanhMlpMaxChannels];
    for (int64_t c = 0; c < net.width[0]; ++c) a[c] = input[c * points + n];
    for (int64_t l = 0; l < net.layers; ++l) {
      dense_tanh_point(net, l, a, z);
      for (int64_t j = 0; j < net.width[l + 1]; ++j) a[j] = z[j];
    }
    for (int64_t j = 0; j < net.width[net.layers]; ++j) output[j * points + n] = a[j];
  }
}

// Where the backward leaves its per-point terms, passed by value: hidden[l - 1] receives
// the input of layer l (l >= 1), pre[l] the gradient with respect to layer l's
// pre-activation; each is [width, points].
template <typename scalar_t>
struct Scratch {
  scalar_t* hidden[kTanhMlpMaxLayers];
  scalar_t* pre[kTanhMlpMaxLayers];
};

template <typename scalar_t>
__global__ void tanh_mlp_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                                         scalar_t* __restrict__ grad_input, DeviceNetwork<scalar_t> net,
                                         Scratch<scalar_t> scratch, int64_t points) {
  ODEREG_CUDA_1D_KERNEL_LOOP(n, points) {
    scalar_t act[kTanhMlpMaxLayers + 1][kTanhMlpMaxChannels];
    for (int64_t c = 0; c < net.width[0]; ++c) act[0][c] = input[c * points + n];
    for (int64_t l = 0; l < net.layers; ++l) dense_tanh_point(net, l, act[l], act[l + 1]);
    scalar_t g[kTanhMlpMaxChannels], prev[kTanhMlpMaxChannels];
    const int64_t last = net.layers;
    for (int64_t j = 0; j < net.width[last]; ++j) g[j] = grad_output[j * points + n];
    for (int64_t l = last - 1; l >= 0; --l) {
      const int64_t cin = net.width[l], cout = net.width[l + 1];
      for (int64_t j = 0; j < cout; ++j) {
        g[j] *= scalar_t(1) - act[l + 1][j] * act[l + 1][j];
        scratch.pre[l][j * points + n] = g[j];
      }
      if (l >= 1) {
        for (int64_t c = 0; c < cin; ++c) scratch.hidden[l - 1][c * points + n] = act[l][c];
      }
      for (int64_t c = 0; c < cin; ++c) {
        scalar_t s = scalar_t(0);
        for (int64_t j = 0; j < cout; ++j) s += net.w[l][j * cin + c] * g[j];
        prev[c] = s;
      }
      for (int64_t c = 0; c < cin; ++c) g[c] = prev[c];
    }
    for (int64_t c = 0; c < net.width[0]; ++c) grad_input[c * points + n] = g[c];
  }
}

at::Tensor tanh_mlp_cuda(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  check_tanh_mlp_args(input, weights, biases, "tanh_mlp");
  check_cuda_tensor(input, "tanh_mlp", "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const std::vector<at::Tensor> w = contiguous_all(weights), b = contiguous_all(biases);
  const int64_t points = x.size(1);
  at::Tensor output = at::empty({w.back().size(0), points}, x.options());
  if (points == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "itk_odereg::tanh_mlp_cuda", [&] {
    tanh_mlp_kernel<scalar_t><<<blocks_for(points), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), device_network<scalar_t>(x, w, b), points);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> tanh_mlp_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                               at::TensorList weights, at::TensorList biases) {
  check_tanh_mlp_backward_args(grad_output, input, weights, biases, "_tanh_mlp_backward");
  check_cuda_tensor(input, "_tanh_mlp_backward", "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor go = grad_output.contiguous();
  const std::vector<at::Tensor> w = contiguous_all(weights), b = contiguous_all(biases);
  const int64_t points = x.size(1);
  const int64_t layers = static_cast<int64_t>(w.size());
  at::Tensor grad_input = at::empty_like(x);
  std::vector<at::Tensor> hidden, pre;
  for (int64_t l = 0; l < layers; ++l) {
    pre.push_back(at::empty({w[l].size(0), points}, x.options()));
    if (l >= 1) hidden.push_back(at::empty({w[l].size(1), points}, x.options()));
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "itk_odereg::_tanh_mlp_backward_cuda", [&] {
    Scratch<scalar_t> scratch{};
    for (size_t l = 0; l < hidden.size(); ++l) scratch.hidden[l] = hidden[l].data_ptr<scalar_t>();
    for (size_t l = 0; l < pre.size(); ++l) scratch.pre[l] = pre[l].data_ptr<scalar_t>();
    if (points > 0) {
      tanh_mlp_backward_kernel<scalar_t><<<blocks_for(points), kThreadsPerBlock, 0,
                                           c10::cuda::getCurrentCUDAStream()>>>(
          go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
          device_network<scalar_t>(x, w, b), scratch, points);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  std::vector<at::Tensor> result{grad_input};
  for (int64_t l = 0; l < layers; ++l) result.push_back(at::mm(pre[l], (l == 0 ? x : hidden[l - 1]).t()));
  for (int64_t l = 0; l < layers; ++l) result.push_back(at::sum(pre[l], {1}));
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CUDA, m) {
  m.impl("tanh_mlp", &tanh_mlp_cuda);
  m.impl("_tanh_mlp_backward", &tanh_mlp_backward_cuda);
}

}  // namespace ops
}  // namespace itk_odereg
