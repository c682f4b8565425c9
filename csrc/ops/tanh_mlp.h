#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace itk_odereg {
namespace ops {

// A pointwise network with tanh after every layer, the last included:
// a_0 = input [C_0, N]; a_{l+1} = tanh(weights[l] a_l + biases[l][:, None]); returns a_L [C_L, N].
// (1x1 convolutions of a [1, C_0, *S] field, viewed as [C_0, prod(S)].)
at::Tensor tanh_mlp(const at::Tensor& input, at::TensorList weights, at::TensorList biases);

namespace detail {
// Gradients of sum(grad_output * tanh_mlp(input, weights, biases)):
// {d input, d weights[0..L), d biases[0..L)}.
std::vector<at::Tensor> _tanh_mlp_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                           at::TensorList weights, at::TensorList biases);
}  // namespace detail

}  // namespace ops
}  // namespace itk_odereg
