// Autograd for the displacement-field regularizers. Each backward is its own
// op; asking for its gradient (double backward) raises "not implemented"
// instead of silently treating it as a constant.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace itk_odereg {
namespace ops {

namespace {

using OptionalSpacing = c10::optional<c10::ArrayRef<double>>;

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

c10::optional<std::vector<double>> to_vector(const OptionalSpacing& spacing) {
  if (!spacing.has_value()) return c10::nullopt;
  return spacing->vec();
}

// Energies with an optional spacing: diffusion and bending.
template <const char* Forward, const char* Backward>
class SpacedEnergyFunction : public torch::autograd::Function<SpacedEnergyFunction<Forward, Backward>> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& u,
                                                OptionalSpacing spacing) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({u});
    const auto vec = to_vector(spacing);
    ctx->saved_data["spacing"] = vec.has_value() ? c10::IValue(*vec) : c10::IValue();
    static auto op = find_op<at::Tensor(const at::Tensor&, OptionalSpacing)>(Forward);
    return {op.call(u, spacing)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const auto spacing_value = ctx->saved_data["spacing"];
    const auto spacing_vec = spacing_value.isNone() ? std::vector<double>() : spacing_value.toDoubleVector();
    const OptionalSpacing spacing = spacing_value.isNone() ? OptionalSpacing() : OptionalSpacing(spacing_vec);
    static auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, OptionalSpacing)>(Backward);
    return {op.call(grad_output[0], saved[0], spacing), at::Tensor()};
  }
};

constexpr char kDiffusion[] = "itk_odereg::diffusion_energy";
constexpr char kDiffusionBackward[] = "itk_odereg::_diffusion_energy_backward";
constexpr char kBending[] = "itk_odereg::bending_energy";
constexpr char kBendingBackward[] = "itk_odereg::_bending_energy_backward";

class JacobianDeterminantFunction : public torch::autograd::Function<JacobianDeterminantFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& u) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({u});
    static auto op = find_op<at::Tensor(const at::Tensor&)>("itk_odereg::jacobian_determinant");
    return {op.call(u)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    static auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("itk_odereg::_jacobian_determinant_backward");
    return {op.call(grad_output[0], ctx->get_saved_variables()[0])};
  }
};

class JacobianPenaltyFunction : public torch::autograd::Function<JacobianPenaltyFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& u,
                                                double threshold) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({u});
    ctx->saved_data["threshold"] = threshold;
    static auto op = find_op<at::Tensor(const at::Tensor&, double)>("itk_odereg::jacobian_penalty");
    return {op.call(u, threshold)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    static auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("itk_odereg::_jacobian_penalty_backward");
    return {op.call(grad_output[0], ctx->get_saved_variables()[0], ctx->saved_data["threshold"].toDouble()),
            at::Tensor()};
  }
};

at::Tensor diffusion_autograd(const at::Tensor& u, OptionalSpacing spacing) {
  return SpacedEnergyFunction<kDiffusion, kDiffusionBackward>::apply(u, spacing)[0];
}
at::Tensor bending_autograd(const at::Tensor& u, OptionalSpacing spacing) {
  return SpacedEnergyFunction<kBending, kBendingBackward>::apply(u, spacing)[0];
}
at::Tensor jacobian_determinant_autograd(const at::Tensor& u) { return JacobianDeterminantFunction::apply(u)[0]; }
at::Tensor jacobian_penalty_autograd(const at::Tensor& u, double threshold) {
  return JacobianPenaltyFunction::apply(u, threshold)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, Autograd, m) {
  m.impl("diffusion_energy", &diffusion_autograd);
  m.impl("bending_energy", &bending_autograd);
  m.impl("jacobian_determinant", &jacobian_determinant_autograd);
  m.impl("jacobian_penalty", &jacobian_penalty_autograd);
  for (const char* backward : {"_diffusion_energy_backward", "_bending_energy_backward",
                               "_jacobian_determinant_backward", "_jacobian_penalty_backward"}) {
    m.impl(backward, torch::autograd::autogradNotImplementedFallback());
  }
}

}  // namespace ops
}  // namespace itk_odereg
