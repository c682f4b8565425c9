#include "box_sum.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace itk_odereg {
namespace ops {

void box_sum_(at::Tensor& x, at::IntArrayRef radii) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::_box_sum_", "")
                       .typed<void(at::Tensor&, at::IntArrayRef)>();
  op.call(x, radii);
}

TORCH_LIBRARY_FRAGMENT(itk_odereg, m) {
  // Internal building block of the LNCC loss (itk_odereg.losses): no autograd of
  // its own; the loss's hand-written backward calls it again (a box sum is its
  // own adjoint).
  m.def("_box_sum_(Tensor(a!) x, int[] radii) -> ()");
}

}  // namespace ops
}  // namespace itk_odereg
