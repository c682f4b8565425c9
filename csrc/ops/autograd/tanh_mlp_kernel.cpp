// Autograd for itk_odereg::tanh_mlp, in C++ so that TorchScript modules and
// libtorch programs that only load the library get its gradients too.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../common/tanh_mlp.h"
#include "../tanh_mlp.h"

namespace itk_odereg {
namespace ops {

namespace {

class TanhMlpFunction : public torch::autograd::Function<TanhMlpFunction> {
 public:
  // The weights and biases arrive as one list, [w_0 .. w_{L-1}, b_0 .. b_{L-1}]: autograd
  // functions take tensors or lists of them, and one flat list keeps the gradients aligned.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                at::TensorList parameters) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const size_t layers = parameters.size() / 2;
    const std::vector<at::Tensor> weights(parameters.begin(), parameters.begin() + layers);
    const std::vector<at::Tensor> biases(parameters.begin() + layers, parameters.end());
    std::vector<at::Tensor> saved{input};
    saved.insert(saved.end(), parameters.begin(), parameters.end());
    ctx->save_for_backward(saved);
    return {tanh_mlp(input, weights, biases)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const size_t layers = (saved.size() - 1) / 2;
    const std::vector<at::Tensor> weights(saved.begin() + 1, saved.begin() + 1 + layers);
    const std::vector<at::Tensor> biases(saved.begin() + 1 + layers, saved.end());
    // The backward of a list argument is one gradient per element, after the input's.
    return detail::_tanh_mlp_backward(grad_output[0], saved[0], weights, biases);
  }
};

at::Tensor tanh_mlp_autograd(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  // Checked before the lists are joined: the function splits them again by count.
  check_tanh_mlp_args(input, weights, biases, "tanh_mlp");
  torch::autograd::variable_list parameters(weights.begin(), weights.end());
  parameters.insert(parameters.end(), biases.begin(), biases.end());
  return TanhMlpFunction::apply(input, at::TensorList(parameters))[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, Autograd, m) {
  m.impl("tanh_mlp", &tanh_mlp_autograd);
  // Double backward is not implemented: the fallback raises when asked for it
  // instead of treating the gradient as a constant.
  m.impl("_tanh_mlp_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ops
}  // namespace itk_odereg
