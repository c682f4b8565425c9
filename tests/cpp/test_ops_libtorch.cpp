// The itk_odereg ops from a plain libtorch program: the C++ API in ops.h,
// dispatch through torch::ops, and autograd registered in C++.
// Built by CMakeLists.txt; run by tests/test_cmake_libtorch.py.
#include <torch/torch.h>

#include <cstdio>

#include "ops.h"

namespace F = torch::nn::functional;

#define EXPECT(cond, msg)                                           \
  do {                                                              \
    if (!(cond)) {                                                  \
      std::fprintf(stderr, "FAILED: %s (%s)\n", msg, #cond);        \
      return 1;                                                     \
    }                                                               \
  } while (0)

int main() {
  torch::manual_seed(0);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const int64_t D = 5, H = 6, W = 7;

  // warp vs grid_sample(align_corners=True) on the equivalent (x, y, z) grid.
  auto image = torch::randn({1, 2, D, H, W}, opts).requires_grad_(true);
  auto disp = (2 * torch::randn({1, 3, D, H, W}, opts)).requires_grad_(true);
  auto out = itk_odereg::ops::warp(image, disp, "zeros");
  auto zz = torch::arange(D, opts).view({D, 1, 1}).expand({D, H, W});
  auto yy = torch::arange(H, opts).view({1, H, 1}).expand({D, H, W});
  auto xx = torch::arange(W, opts).view({1, 1, W}).expand({D, H, W});
  auto gz = 2 * (zz + disp[0][0]) / (D - 1) - 1;
  auto gy = 2 * (yy + disp[0][1]) / (H - 1) - 1;
  auto gx = 2 * (xx + disp[0][2]) / (W - 1) - 1;
  auto grid = torch::stack({gx, gy, gz}, -1).unsqueeze(0);
  auto ref = F::grid_sample(image, grid, F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kZeros).align_corners(true));
  EXPECT((out - ref).abs().max().item<double>() < 1e-12, "warp matches grid_sample");

  // Autograd through the C++ registration.
  auto g = torch::randn_like(out);
  auto grads = torch::autograd::grad({out}, {image, disp}, {g});
  auto grads_ref = torch::autograd::grad({ref}, {image, disp}, {g});
  EXPECT((grads[0] - grads_ref[0]).abs().max().item<double>() < 1e-12, "image gradient matches grid_sample");
  EXPECT((grads[1] - grads_ref[1]).abs().max().item<double>() < 1e-12, "displacement gradient matches grid_sample");

  // Exact Jacobian determinant of an affine field u(x) = A x.
  auto A = 0.1 * torch::randn({3, 3}, opts);
  auto pos = torch::stack({zz, yy, xx});  // [3, D, H, W]
  auto u = torch::einsum("ij,jdhw->idhw", {A, pos}).unsqueeze(0).contiguous();
  auto det = itk_odereg::ops::jacobian_determinant(u);
  auto expected = torch::det(torch::eye(3, opts) + A).item<double>();
  EXPECT((det - expected).abs().max().item<double>() < 1e-12, "det(I + A) for an affine field");

  // bspline_to_dense: a constant control grid gives a constant field.
  auto control = torch::full({1, 3, (D - 1) / 2 + 4, (H - 1) / 2 + 4, (W - 1) / 2 + 4}, 1.5, opts);
  auto dense = itk_odereg::ops::bspline_to_dense(control, {D, H, W}, {2, 2, 2});
  EXPECT((dense - 1.5).abs().max().item<double>() < 1e-12, "partition of unity");

  // The energies are callable and finite.
  EXPECT(std::isfinite(itk_odereg::ops::diffusion_energy(u).item<double>()), "diffusion energy");
  EXPECT(std::isfinite(itk_odereg::ops::bending_energy(u, std::vector<double>{1.0, 2.0, 3.0}).item<double>()),
         "bending energy");
  EXPECT(itk_odereg::ops::jacobian_penalty(torch::zeros({1, 3, D, H, W}, opts), 0.5).item<double>() == 0.0,
         "no penalty for the identity");

  // The pointwise tanh network against the same layers in torch, and its gradient through C++ autograd.
  auto state = torch::randn({3, 300}, opts).requires_grad_(true);
  std::vector<torch::Tensor> weights{torch::randn({8, 3}, opts), torch::randn({3, 8}, opts)};
  std::vector<torch::Tensor> biases{torch::randn({8}, opts), torch::randn({3}, opts)};
  auto response = itk_odereg::ops::tanh_mlp(state, weights, biases);
  auto layers = torch::tanh(torch::addmm(biases[1].unsqueeze(1), weights[1],
                                         torch::tanh(torch::addmm(biases[0].unsqueeze(1), weights[0], state))));
  EXPECT((response - layers).abs().max().item<double>() < 1e-12, "tanh_mlp matches torch");
  auto state_grad = torch::autograd::grad({response.sum()}, {state})[0];
  auto layers_grad = torch::autograd::grad({layers.sum()}, {state})[0];
  EXPECT((state_grad - layers_grad).abs().max().item<double>() < 1e-12, "tanh_mlp gradient");

  // A clear error for bad input, not a crash.
  bool threw = false;
  try {
    itk_odereg::ops::warp(torch::randn({1, 1, D, H, W}, opts), torch::randn({1, 2, D, H, W}, opts));
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("'displacement' must have") != std::string::npos;
  }
  EXPECT(threw, "wrong channel count raises a named error");

  std::printf("test_ops_libtorch: all checks passed\n");
  return 0;
}
