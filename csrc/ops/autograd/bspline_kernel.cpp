// Autograd for itk_odereg::bspline_to_dense: the backward is the adjoint,
// itself linear, so its backward is bspline_to_dense again (double backward works).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../bspline.h"

namespace itk_odereg {
namespace ops {

namespace {

at::Tensor bspline_to_dense_autograd(const at::Tensor& control, c10::SymIntArrayRef shape,
                                     c10::IntArrayRef control_spacing);
at::Tensor bspline_to_dense_backward_autograd(const at::Tensor& grad_output, c10::SymIntArrayRef control_shape,
                                              c10::IntArrayRef control_spacing);

class BSplineToDenseFunction : public torch::autograd::Function<BSplineToDenseFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& control,
                                                c10::SymIntArrayRef shape, c10::IntArrayRef control_spacing) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["control_shape"] = control.sym_sizes().slice(2).vec();
    ctx->saved_data["dense_shape"] = shape.vec();
    ctx->saved_data["control_spacing"] = control_spacing.vec();
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("itk_odereg::bspline_to_dense", "")
                         .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef)>();
    return {op.call(control, shape, control_spacing)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    const auto control_shape = ctx->saved_data["control_shape"].toSymIntList().vec();
    const auto spacing = ctx->saved_data["control_spacing"].toIntVector();
    return {bspline_to_dense_backward_autograd(grad_output[0], control_shape, spacing), at::Tensor(), at::Tensor()};
  }
};

class BSplineToDenseBackwardFunction : public torch::autograd::Function<BSplineToDenseBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad_output,
                                                c10::SymIntArrayRef control_shape, c10::IntArrayRef control_spacing) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["dense_shape"] = grad_output.sym_sizes().slice(2).vec();
    ctx->saved_data["control_spacing"] = control_spacing.vec();
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("itk_odereg::_bspline_to_dense_backward", "")
                         .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef)>();
    return {op.call(grad_output, control_shape, control_spacing)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad) {
    const auto dense_shape = ctx->saved_data["dense_shape"].toSymIntList().vec();
    const auto spacing = ctx->saved_data["control_spacing"].toIntVector();
    return {bspline_to_dense_autograd(grad[0], dense_shape, spacing), at::Tensor(), at::Tensor()};
  }
};

at::Tensor bspline_to_dense_autograd(const at::Tensor& control, c10::SymIntArrayRef shape,
                                     c10::IntArrayRef control_spacing) {
  return BSplineToDenseFunction::apply(control, shape, control_spacing)[0];
}

at::Tensor bspline_to_dense_backward_autograd(const at::Tensor& grad_output, c10::SymIntArrayRef control_shape,
                                              c10::IntArrayRef control_spacing) {
  return BSplineToDenseBackwardFunction::apply(grad_output, control_shape, control_spacing)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, Autograd, m) {
  m.impl("bspline_to_dense", &bspline_to_dense_autograd);
  m.impl("_bspline_to_dense_backward", &bspline_to_dense_backward_autograd);
}

}  // namespace ops
}  // namespace itk_odereg
