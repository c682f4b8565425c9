// Autograd for itk_odereg::warp and itk_odereg::sample_at. Registered in C++ (not Python) so that
// gradients also work in TorchScript modules and libtorch programs that only
// load the library.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../warp.h"

namespace itk_odereg {
namespace ops {

namespace {

// One autograd function for both ops: they differ only in which forward and
// backward op they call (sample_at lets the image lie on another grid).
template <bool kAcrossGrids>
class WarpFunction : public torch::autograd::Function<WarpFunction<kAcrossGrids>> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image,
                                                const at::Tensor& displacement, c10::string_view padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["padding"] = std::string(padding);
    ctx->save_for_backward({image, displacement});
    return {kAcrossGrids ? sample_at(image, displacement, std::string(padding))
                         : warp(image, displacement, std::string(padding))};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const bool need_image = ctx->needs_input_grad(0);
    const bool need_disp = ctx->needs_input_grad(1);
    const std::string& padding = ctx->saved_data["padding"].toStringRef();
    auto grads = kAcrossGrids
                     ? detail::_sample_at_backward(grad_output[0], saved[0], saved[1], padding, need_image, need_disp)
                     : detail::_warp_backward(grad_output[0], saved[0], saved[1], padding, need_image, need_disp);
    return {need_image ? std::get<0>(grads) : at::Tensor(), need_disp ? std::get<1>(grads) : at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor warp_autograd(const at::Tensor& image, const at::Tensor& displacement, c10::string_view padding) {
  return WarpFunction<false>::apply(image, displacement, padding)[0];
}

at::Tensor sample_at_autograd(const at::Tensor& image, const at::Tensor& displacement, c10::string_view padding) {
  return WarpFunction<true>::apply(image, displacement, padding)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, Autograd, m) {
  m.impl("warp", &warp_autograd);
  // Double backward is not implemented: the fallback raises when asked for it
  // instead of treating the gradient as a constant.
  m.impl("_warp_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("sample_at", &sample_at_autograd);
  m.impl("_sample_at_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace ops
}  // namespace itk_odereg
