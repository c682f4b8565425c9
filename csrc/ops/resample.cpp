#include "resample.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace itk_odereg {
namespace ops {

at::Tensor resample_linear(const at::Tensor& input, c10::IntArrayRef shape) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::resample_linear", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>();
  return op.call(input, c10::fromIntArrayRefSlow(shape));
}

namespace detail {
at::Tensor _resample_linear_backward(const at::Tensor& grad_output, c10::IntArrayRef input_shape) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::_resample_linear_backward", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>();
  return op.call(grad_output, c10::fromIntArrayRefSlow(input_shape));
}
}  // namespace detail

TORCH_LIBRARY_FRAGMENT(itk_odereg, m) {
  m.def("resample_linear(Tensor input, SymInt[] shape) -> Tensor");
  m.def("_resample_linear_backward(Tensor grad_output, SymInt[] input_shape) -> Tensor");
}

}  // namespace ops
}  // namespace itk_odereg
