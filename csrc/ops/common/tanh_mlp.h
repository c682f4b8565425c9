// Shared by the CPU and CUDA kernels of itk_odereg::tanh_mlp: the size limits,
// the argument checks of the entry points, and the float32 tanh they evaluate.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "checks.h"
#include "geometry.h"

namespace itk_odereg {
namespace ops {

// The kernels keep one activation vector per point in registers or on the
// stack: the width of every layer and the depth are bounded.
constexpr int64_t kTanhMlpMaxChannels = 32;
constexpr int64_t kTanhMlpMaxLayers = 8;

// tanh on float32 as x P(x^2) / Q(x^2) on |x| <= 9 (tanh(9) rounds to 1 in float32),
// a rational least-squares fit with 1/Q weighting (coefficients in double, evaluated in
// float). Branch-free arithmetic, so the CPU loops vectorize; torch's own float tanh on
// CPU costs about 3 ns per value here. Measured against tanh in double on a dense grid:
// at most 3.2e-7 absolute error (5 float ulp near +-1), against 3.1e-8 for torch.tanh.
ODEREG_HOST_DEVICE float tanh_input_clamp(float x) {
  x = x > 9.0f ? 9.0f : x;
  return x < -9.0f ? -9.0f : x;
}

// The fit itself, for |x| <= 9 (tanh_input_clamp). The CPU kernels clamp in a loop of
// their own: GCC does not vectorize a clamp followed by arithmetic in one loop (it
// splits the paths) unless FP exceptions may be ignored (-fno-trapping-math).
ODEREG_HOST_DEVICE float tanh_rational_clamped(float x) {
  const float x2 = x * x;
  float p = -8.88792630e-14f;
  p = p * x2 + 5.43291596e-11f;
  p = p * x2 - 2.05463651e-08f;
  p = p * x2 + 1.12334170e-05f;
  p = p * x2 + 3.11152447e-03f;
  p = p * x2 + 1.30907906e-01f;
  p = p * x2 + 9.99999998e-01f;
  float q = 2.55716150e-04f;
  q = q * x2 + 2.45253308e-02f;
  q = q * x2 + 4.64241197e-01f;
  q = q * x2 + 1.0f;
  const float t = x * p / q;
  // The fit overshoots 1 by an ulp or two near the clamp.
  const float r = t > 1.0f ? 1.0f : t;
  return r < -1.0f ? -1.0f : r;
}

ODEREG_HOST_DEVICE float tanh_rational(float x) { return tanh_rational_clamped(tanh_input_clamp(x)); }

ODEREG_HOST_DEVICE float tanh_of(float x) { return tanh_rational(x); }
ODEREG_HOST_DEVICE double tanh_of(double x) { return tanh(x); }

// input [C_0, N]; weights[l] [C_{l+1}, C_l]; biases[l] [C_{l+1}]; every tensor of one dtype and device.
// Returns the number of layers.
inline int64_t check_tanh_mlp_args(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                                   const char* op) {
  check_floating(input, op, "input");
  TORCH_CHECK(input.dim() == 2, "itk_odereg.", op, "(): 'input' must have shape [channels, points], got ",
              input.sizes());
  const int64_t layers = static_cast<int64_t>(weights.size());
  TORCH_CHECK(layers >= 1 && layers <= kTanhMlpMaxLayers, "itk_odereg.", op, "(): 'weights' must hold 1 to ",
              kTanhMlpMaxLayers, " layers, got ", layers);
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == layers, "itk_odereg.", op,
              "(): 'biases' must hold one vector per layer of 'weights' (", layers, "), got ", biases.size());
  int64_t width = input.size(0);
  TORCH_CHECK(width >= 1 && width <= kTanhMlpMaxChannels, "itk_odereg.", op, "(): 'input' must have 1 to ",
              kTanhMlpMaxChannels, " channels, got shape ", input.sizes());
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor& w = weights[l];
    const at::Tensor& b = biases[l];
    check_floating(w, op, "weights");
    check_floating(b, op, "biases");
    check_same_dtype_device(input, "input", w, "weights", op);
    check_same_dtype_device(input, "input", b, "biases", op);
    TORCH_CHECK(w.dim() == 2 && w.size(1) == width && w.size(0) >= 1 && w.size(0) <= kTanhMlpMaxChannels,
                "itk_odereg.", op, "(): 'weights' of layer ", l, " must have shape [out, ", width,
                "] with 1 <= out <= ", kTanhMlpMaxChannels, ", got ", w.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), "itk_odereg.", op, "(): 'biases' of layer ", l,
                " must have shape [", w.size(0), "], got ", b.sizes());
    width = w.size(0);
  }
  return layers;
}

inline void check_tanh_mlp_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::TensorList weights, at::TensorList biases, const char* op) {
  const int64_t layers = check_tanh_mlp_args(input, weights, biases, op);
  check_floating(grad_output, op, "grad_output");
  check_same_dtype_device(input, "input", grad_output, "grad_output", op);
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == weights[layers - 1].size(0) &&
                  grad_output.size(1) == input.size(1),
              "itk_odereg.", op, "(): 'grad_output' must have shape [", weights[layers - 1].size(0), ", ",
              input.size(1), "], got ", grad_output.sizes());
}

}  // namespace ops
}  // namespace itk_odereg
