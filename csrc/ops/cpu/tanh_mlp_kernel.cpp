// CPU kernels of itk_odereg::tanh_mlp and its backward: a pointwise network
// (a 1x1-convolution stack with tanh after every layer) evaluated block by block
// of points, every layer's activations of a block staying in cache. As separate
// torch ops (addmm, tanh, and their backwards) the same network makes one pass
// over memory per layer and direction, and torch's float tanh is scalar here.
//
// Determinism: the points are cut into blocks of a fixed size, whatever the
// thread count; each block's share of the parameter gradients is summed on its
// own and the shares are added in block order, so the sums (and the bits) are
// the same on 1 or 16 threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/tanh_mlp.h"
#include "vectorize.h"

namespace itk_odereg {
namespace ops {

namespace {

// Points per block: a multiple of kLanes. The parameter-gradient sums run kLanes
// accumulators side by side (a form the compiler vectorizes without reassociating).
constexpr int64_t kBlock = 256;
constexpr int64_t kLanes = 8;

template <typename scalar_t>
struct Network {
  int64_t layers = 0;
  int64_t width[kTanhMlpMaxLayers + 1] = {};  // width[0]: input channels; width[l + 1]: layer l's outputs
  std::vector<at::Tensor> keep;               // contiguous copies the pointers read
  const scalar_t* w[kTanhMlpMaxLayers] = {};
  const scalar_t* b[kTanhMlpMaxLayers] = {};
  int64_t offset_w[kTanhMlpMaxLayers] = {}, offset_b[kTanhMlpMaxLayers] = {};  // into the gradient vector
  int64_t parameters = 0;
};

template <typename scalar_t>
Network<scalar_t> network(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  Network<scalar_t> net;
  net.layers = static_cast<int64_t>(weights.size());
  net.width[0] = input.size(0);
  for (int64_t l = 0; l < net.layers; ++l) {
    net.keep.push_back(weights[l].contiguous());
    net.keep.push_back(biases[l].contiguous());
    net.w[l] = net.keep[2 * l].template data_ptr<scalar_t>();
    net.b[l] = net.keep[2 * l + 1].template data_ptr<scalar_t>();
    net.width[l + 1] = weights[l].size(0);
    net.offset_w[l] = net.parameters;
    net.parameters += net.width[l + 1] * net.width[l];
    net.offset_b[l] = net.parameters;
    net.parameters += net.width[l + 1];
  }
  return net;
}

// out[j, i] = tanh(b[j] + sum_c w[j, c] in[c, i]) for a block of n points (rows of length n).
template <typename scalar_t>
ODEREG_SIMD_CLONES void dense_tanh(scalar_t* __restrict__ out, const scalar_t* __restrict__ in,
                                   const scalar_t* __restrict__ w, const scalar_t* __restrict__ b, int64_t cin,
                                   int64_t cout, int64_t n) {
  for (int64_t j = 0; j < cout; ++j) {
    scalar_t* o = out + j * n;
    const scalar_t bj = b[j];
    for (int64_t i = 0; i < n; ++i) o[i] = bj;
    for (int64_t c = 0; c < cin; ++c) {
      const scalar_t wjc = w[j * cin + c];
      const scalar_t* x = in + c * n;
      for (int64_t i = 0; i < n; ++i) o[i] += wjc * x[i];
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      for (int64_t i = 0; i < n; ++i) o[i] = tanh_input_clamp(o[i]);
      for (int64_t i = 0; i < n; ++i) o[i] = tanh_rational_clamped(o[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = tanh_of(o[i]);
    }
  }
}

// g[j, i] *= 1 - a[j, i]^2 (tanh's derivative from its value).
template <typename scalar_t>
ODEREG_SIMD_CLONES void times_tanh_slope(scalar_t* __restrict__ g, const scalar_t* __restrict__ a, int64_t count) {
  for (int64_t i = 0; i < count; ++i) g[i] *= scalar_t(1) - a[i] * a[i];
}

// prev[c, i] = sum_j w[j, c] g[j, i]: the gradient through a layer's weights.
template <typename scalar_t>
ODEREG_SIMD_CLONES void transposed_product(scalar_t* __restrict__ prev, const scalar_t* __restrict__ g,
                                           const scalar_t* __restrict__ w, int64_t cin, int64_t cout, int64_t n) {
  for (int64_t c = 0; c < cin; ++c) {
    scalar_t* p = prev + c * n;
    for (int64_t i = 0; i < n; ++i) p[i] = scalar_t(0);
    for (int64_t j = 0; j < cout; ++j) {
      const scalar_t wjc = w[j * cin + c];
      const scalar_t* gj = g + j * n;
      for (int64_t i = 0; i < n; ++i) p[i] += wjc * gj[i];
    }
  }
}

// sum_i x[i] y[i] over n points (n a multiple of kLanes), kLanes partial sums added in a fixed order.
template <typename scalar_t>
ODEREG_SIMD_CLONES scalar_t dot(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, int64_t n) {
  scalar_t acc[kLanes] = {};
  for (int64_t i = 0; i < n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += x[i + k] * y[i + k];
  }
  scalar_t s = scalar_t(0);
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

template <typename scalar_t>
ODEREG_SIMD_CLONES scalar_t row_sum(const scalar_t* __restrict__ x, int64_t n) {
  scalar_t acc[kLanes] = {};
  for (int64_t i = 0; i < n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += x[i + k];
  }
  scalar_t s = scalar_t(0);
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

int64_t max_width(const int64_t* width, int64_t layers) {
  return *std::max_element(width, width + layers + 1);
}

// Copies rows [c, first : first + n) of a [channels, points] array into a [channels, stride] block,
// zero-filling the tail up to stride.
template <typename scalar_t>
void load_block(scalar_t* dst, const scalar_t* src, int64_t channels, int64_t points, int64_t first, int64_t n,
                int64_t stride) {
  for (int64_t c = 0; c < channels; ++c) {
    std::copy(src + c * points + first, src + c * points + first + n, dst + c * stride);
    std::fill(dst + c * stride + n, dst + (c + 1) * stride, scalar_t(0));
  }
}

// The activations of every layer for one block: act[l] is [width[l], stride], act[0] the input.
template <typename scalar_t>
void forward_block(const Network<scalar_t>& net, scalar_t* const* act, int64_t stride) {
  for (int64_t l = 0; l < net.layers; ++l) {
    dense_tanh(act[l + 1], act[l], net.w[l], net.b[l], net.width[l], net.width[l + 1], stride);
  }
}

at::Tensor tanh_mlp_cpu(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  check_tanh_mlp_args(input, weights, biases, "tanh_mlp");
  const at::Tensor x = input.contiguous();
  const int64_t points = x.size(1);
  at::Tensor output = at::empty({weights.back().size(0), points}, x.options());
  if (points == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "itk_odereg::tanh_mlp", [&] {
    const Network<scalar_t> net = network<scalar_t>(x, weights, biases);
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = output.data_ptr<scalar_t>();
    const int64_t blocks = (points + kBlock - 1) / kBlock;
    const int64_t widest = max_width(net.width, net.layers);
    const int64_t out_channels = net.width[net.layers];
    at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
      // Two buffers, used in turn: the forward keeps only the current layer.
      std::vector<scalar_t> ping(widest * kBlock), pong(widest * kBlock);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kBlock;
        const int64_t n = std::min(kBlock, points - first);
        const int64_t stride = (n + kLanes - 1) / kLanes * kLanes;
        load_block(ping.data(), src, net.width[0], points, first, n, stride);
        scalar_t* cur = ping.data();
        scalar_t* next = pong.data();
        for (int64_t l = 0; l < net.layers; ++l) {
          dense_tanh(next, cur, net.w[l], net.b[l], net.width[l], net.width[l + 1], stride);
          std::swap(cur, next);
        }
        for (int64_t j = 0; j < out_channels; ++j) std::copy(cur + j * stride, cur + j * stride + n, dst + j * points + first);
      }
    });
  });
  return output;
}

std::vector<at::Tensor> tanh_mlp_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                              at::TensorList weights, at::TensorList biases) {
  check_tanh_mlp_backward_args(grad_output, input, weights, biases, "_tanh_mlp_backward");
  const at::Tensor x = input.contiguous();
  const at::Tensor go = grad_output.contiguous();
  const int64_t points = x.size(1);
  const int64_t layers = static_cast<int64_t>(weights.size());
  at::Tensor grad_input = at::empty_like(x);
  std::vector<at::Tensor> result{grad_input};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "itk_odereg::_tanh_mlp_backward", [&] {
    const Network<scalar_t> net = network<scalar_t>(x, weights, biases);
    const scalar_t* src = x.data_ptr<scalar_t>();
    const scalar_t* gsrc = go.data_ptr<scalar_t>();
    scalar_t* gin = grad_input.data_ptr<scalar_t>();
    const int64_t blocks = (points + kBlock - 1) / kBlock;
    const int64_t widest = max_width(net.width, net.layers);
    int64_t activations = 0;
    for (int64_t l = 0; l <= layers; ++l) activations += net.width[l] * kBlock;
    // Each block's share of the parameter gradients, one row per block.
    std::vector<scalar_t> shares(std::max<int64_t>(blocks, 1) * net.parameters, scalar_t(0));
    at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> store(activations), grad(widest * kBlock), prev(widest * kBlock);
      scalar_t* act[kTanhMlpMaxLayers + 1];
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kBlock;
        const int64_t n = std::min(kBlock, points - first);
        const int64_t stride = (n + kLanes - 1) / kLanes * kLanes;
        int64_t at = 0;
        for (int64_t l = 0; l <= layers; ++l) {
          act[l] = store.data() + at;
          at += net.width[l] * stride;
        }
        // Recomputed rather than saved by the forward: a few flops per value against
        // keeping every hidden layer of every point alive between the passes.
        load_block(act[0], src, net.width[0], points, first, n, stride);
        forward_block(net, act, stride);
        // The zero tail of the incoming gradient keeps padded points out of every sum.
        load_block(grad.data(), gsrc, net.width[layers], points, first, n, stride);
        scalar_t* share = shares.data() + block * net.parameters;
        for (int64_t l = layers - 1; l >= 0; --l) {
          const int64_t cin = net.width[l], cout = net.width[l + 1];
          times_tanh_slope(grad.data(), act[l + 1], cout * stride);
          for (int64_t j = 0; j < cout; ++j) {
            const scalar_t* gj = grad.data() + j * stride;
            for (int64_t c = 0; c < cin; ++c) share[net.offset_w[l] + j * cin + c] = dot(gj, act[l] + c * stride, stride);
            share[net.offset_b[l] + j] = row_sum(gj, stride);
          }
          transposed_product(prev.data(), grad.data(), net.w[l], cin, cout, stride);
          std::swap(grad, prev);
        }
        for (int64_t c = 0; c < net.width[0]; ++c) {
          std::copy(grad.data() + c * stride, grad.data() + c * stride + n, gin + c * points + first);
        }
      }
    });
    std::vector<scalar_t> total(net.parameters, scalar_t(0));
    for (int64_t block = 0; block < blocks; ++block) {
      const scalar_t* share = shares.data() + block * net.parameters;
      for (int64_t p = 0; p < net.parameters; ++p) total[p] += share[p];
    }
    for (int64_t l = 0; l < layers; ++l) {
      at::Tensor gw = at::empty({net.width[l + 1], net.width[l]}, x.options());
      std::copy(total.begin() + net.offset_w[l], total.begin() + net.offset_w[l] + gw.numel(), gw.data_ptr<scalar_t>());
      result.push_back(gw);
    }
    for (int64_t l = 0; l < layers; ++l) {
      at::Tensor gb = at::empty({net.width[l + 1]}, x.options());
      std::copy(total.begin() + net.offset_b[l], total.begin() + net.offset_b[l] + gb.numel(), gb.data_ptr<scalar_t>());
      result.push_back(gb);
    }
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CPU, m) {
  m.impl("tanh_mlp", &tanh_mlp_cpu);
  m.impl("_tanh_mlp_backward", &tanh_mlp_backward_cpu);
}

}  // namespace ops
}  // namespace itk_odereg
