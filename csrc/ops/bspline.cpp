#include "bspline.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace itk_odereg {
namespace ops {

at::Tensor bspline_to_dense(const at::Tensor& control, c10::IntArrayRef shape, c10::IntArrayRef control_spacing) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::bspline_to_dense", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef)>();
  return op.call(control, c10::fromIntArrayRefSlow(shape), control_spacing);
}

namespace detail {
at::Tensor _bspline_to_dense_backward(const at::Tensor& grad_output, c10::IntArrayRef control_shape,
                                      c10::IntArrayRef control_spacing) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::_bspline_to_dense_backward", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef)>();
  return op.call(grad_output, c10::fromIntArrayRefSlow(control_shape), control_spacing);
}
}  // namespace detail

TORCH_LIBRARY_FRAGMENT(itk_odereg, m) {
  m.def("bspline_to_dense(Tensor control, SymInt[] shape, int[] control_spacing) -> Tensor");
  m.def("_bspline_to_dense_backward(Tensor grad_output, SymInt[] control_shape, int[] control_spacing) -> Tensor");
}

}  // namespace ops
}  // namespace itk_odereg
