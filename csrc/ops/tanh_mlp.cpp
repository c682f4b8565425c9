#include "tanh_mlp.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace itk_odereg {
namespace ops {

at::Tensor tanh_mlp(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::tanh_mlp", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, at::TensorList)>();
  return op.call(input, weights, biases);
}

namespace detail {
std::vector<at::Tensor> _tanh_mlp_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                           at::TensorList weights, at::TensorList biases) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("itk_odereg::_tanh_mlp_backward", "")
          .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList)>();
  return op.call(grad_output, input, weights, biases);
}
}  // namespace detail

TORCH_LIBRARY_FRAGMENT(itk_odereg, m) {
  m.def("tanh_mlp(Tensor input, Tensor[] weights, Tensor[] biases) -> Tensor");
  m.def("_tanh_mlp_backward(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] biases) -> Tensor[]");
}

}  // namespace ops
}  // namespace itk_odereg
