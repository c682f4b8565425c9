#include "regularizers.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace itk_odereg {
namespace ops {

using OptionalSpacing = c10::optional<c10::ArrayRef<double>>;

at::Tensor diffusion_energy(const at::Tensor& displacement, OptionalSpacing spacing) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::diffusion_energy", "")
                       .typed<at::Tensor(const at::Tensor&, OptionalSpacing)>();
  return op.call(displacement, spacing);
}

at::Tensor bending_energy(const at::Tensor& displacement, OptionalSpacing spacing) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::bending_energy", "")
                       .typed<at::Tensor(const at::Tensor&, OptionalSpacing)>();
  return op.call(displacement, spacing);
}

at::Tensor jacobian_determinant(const at::Tensor& displacement) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::jacobian_determinant", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  return op.call(displacement);
}

at::Tensor jacobian_penalty(const at::Tensor& displacement, double threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::jacobian_penalty", "")
                       .typed<at::Tensor(const at::Tensor&, double)>();
  return op.call(displacement, threshold);
}

TORCH_LIBRARY_FRAGMENT(itk_odereg, m) {
  m.def("diffusion_energy(Tensor displacement, float[]? spacing=None) -> Tensor");
  m.def("_diffusion_energy_backward(Tensor grad_output, Tensor displacement, float[]? spacing) -> Tensor");
  m.def("bending_energy(Tensor displacement, float[]? spacing=None) -> Tensor");
  m.def("_bending_energy_backward(Tensor grad_output, Tensor displacement, float[]? spacing) -> Tensor");
  m.def("jacobian_determinant(Tensor displacement) -> Tensor");
  m.def("_jacobian_determinant_backward(Tensor grad_output, Tensor displacement) -> Tensor");
  m.def("jacobian_penalty(Tensor displacement, float threshold=0.5) -> Tensor");
  m.def("_jacobian_penalty_backward(Tensor grad_output, Tensor displacement, float threshold) -> Tensor");
}

}  // namespace ops
}  // namespace itk_odereg
