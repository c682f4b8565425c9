#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

namespace itk_odereg {
namespace ops {

// out(p) = image(p + u(p)): linear interpolation (bilinear in 2D, trilinear in
// 3D) of image [N, C, *S] at the voxel positions p + u(p), where the
// displacement [N, d, *S] is in voxel units with channel i along spatial dim i.
// padding: "zeros" (outside is 0) or "border" (clamp to the edge).
at::Tensor warp(const at::Tensor& image, const at::Tensor& displacement, const std::string& padding = "zeros");

// out(p) = image(s * (p + u(p))): like warp, but the image may lie on another
// corner-aligned grid of the same box ([N, C, *S'], S' != S): s = (S' - 1) / (S - 1)
// per axis maps the displacement's voxel positions to the image's. The output
// is on the displacement's grid. An axis of one sample must be one on both.
at::Tensor sample_at(const at::Tensor& image, const at::Tensor& displacement, const std::string& padding = "zeros");

// Composition of displacement fields: (u o v)(p) = v(p) + u(p + v(p)).
at::Tensor compose(const at::Tensor& u, const at::Tensor& v);

namespace detail {
std::tuple<at::Tensor, at::Tensor> _warp_backward(const at::Tensor& grad_output, const at::Tensor& image,
                                                  const at::Tensor& displacement, const std::string& padding,
                                                  bool image_requires_grad, bool displacement_requires_grad);
std::tuple<at::Tensor, at::Tensor> _sample_at_backward(const at::Tensor& grad_output, const at::Tensor& image,
                                                       const at::Tensor& displacement, const std::string& padding,
                                                       bool image_requires_grad, bool displacement_requires_grad);
}  // namespace detail

}  // namespace ops
}  // namespace itk_odereg
