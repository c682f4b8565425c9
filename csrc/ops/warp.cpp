#include "warp.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <torch/library.h>

namespace itk_odereg {
namespace ops {

at::Tensor warp(const at::Tensor& image, const at::Tensor& displacement, const std::string& padding) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::warp", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(image, displacement, padding);
}

at::Tensor sample_at(const at::Tensor& image, const at::Tensor& displacement, const std::string& padding) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("itk_odereg::sample_at", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(image, displacement, padding);
}

at::Tensor compose(const at::Tensor& u, const at::Tensor& v) {
  return at::add(v, warp(u, v, "zeros"));
}

namespace detail {
std::tuple<at::Tensor, at::Tensor> _warp_backward(const at::Tensor& grad_output, const at::Tensor& image,
                                                  const at::Tensor& displacement, const std::string& padding,
                                                  bool image_requires_grad, bool displacement_requires_grad) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("itk_odereg::_warp_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    c10::string_view, bool, bool)>();
  return op.call(grad_output, image, displacement, padding, image_requires_grad, displacement_requires_grad);
}
std::tuple<at::Tensor, at::Tensor> _sample_at_backward(const at::Tensor& grad_output, const at::Tensor& image,
                                                       const at::Tensor& displacement, const std::string& padding,
                                                       bool image_requires_grad, bool displacement_requires_grad) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("itk_odereg::_sample_at_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    c10::string_view, bool, bool)>();
  return op.call(grad_output, image, displacement, padding, image_requires_grad, displacement_requires_grad);
}
}  // namespace detail

TORCH_LIBRARY_FRAGMENT(itk_odereg, m) {
  m.def("warp(Tensor image, Tensor displacement, str padding=\"zeros\") -> Tensor");
  // Gradients that are not requested come back as empty [0] tensors.
  m.def(
      "_warp_backward(Tensor grad_output, Tensor image, Tensor displacement, str padding, "
      "bool image_requires_grad, bool displacement_requires_grad) -> (Tensor, Tensor)");
  m.def("sample_at(Tensor image, Tensor displacement, str padding=\"zeros\") -> Tensor");
  m.def(
      "_sample_at_backward(Tensor grad_output, Tensor image, Tensor displacement, str padding, "
      "bool image_requires_grad, bool displacement_requires_grad) -> (Tensor, Tensor)");
}

}  // namespace ops
}  // namespace itk_odereg
