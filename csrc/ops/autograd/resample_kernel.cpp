// Autograd for itk_odereg::resample_linear: the backward is the adjoint, itself
// linear, so its backward is resample_linear again (double backward works).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../resample.h"

namespace itk_odereg {
namespace ops {

namespace {

at::Tensor resample_linear_autograd(const at::Tensor& input, c10::SymIntArrayRef shape);
at::Tensor resample_linear_backward_autograd(const at::Tensor& grad_output, c10::SymIntArrayRef input_shape);

class ResampleLinearFunction : public torch::autograd::Function<ResampleLinearFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                c10::SymIntArrayRef shape) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["input_shape"] = input.sym_sizes().slice(2).vec();
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("itk_odereg::resample_linear", "")
                         .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>();
    return {op.call(input, shape)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    const auto input_shape = ctx->saved_data["input_shape"].toSymIntList().vec();
    return {resample_linear_backward_autograd(grad_output[0], input_shape), at::Tensor()};
  }
};

class ResampleLinearBackwardFunction : public torch::autograd::Function<ResampleLinearBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad_output,
                                                c10::SymIntArrayRef input_shape) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["output_shape"] = grad_output.sym_sizes().slice(2).vec();
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("itk_odereg::_resample_linear_backward", "")
                         .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>();
    return {op.call(grad_output, input_shape)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad) {
    const auto output_shape = ctx->saved_data["output_shape"].toSymIntList().vec();
    return {resample_linear_autograd(grad[0], output_shape), at::Tensor()};
  }
};

at::Tensor resample_linear_autograd(const at::Tensor& input, c10::SymIntArrayRef shape) {
  return ResampleLinearFunction::apply(input, shape)[0];
}

at::Tensor resample_linear_backward_autograd(const at::Tensor& grad_output, c10::SymIntArrayRef input_shape) {
  return ResampleLinearBackwardFunction::apply(grad_output, input_shape)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, Autograd, m) {
  m.impl("resample_linear", &resample_linear_autograd);
  m.impl("_resample_linear_backward", &resample_linear_backward_autograd);
}

}  // namespace ops
}  // namespace itk_odereg
