#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

namespace itk_odereg {
namespace ops {

// Regularizers of a displacement u [N, d, *S] in voxel units (channel i along
// spatial dim i). Derivatives: central differences inside, one-sided on the
// border. `spacing` (mm per voxel, tensor order) turns voxel derivatives into
// physical ones; without it every spacing is 1.

// mean over n and voxels of sum_{i,j} (d u_i / d x_j)^2  (0-dim tensor).
at::Tensor diffusion_energy(const at::Tensor& displacement, c10::optional<c10::ArrayRef<double>> spacing = {});
// mean over n and voxels of sum_{i,a,b} (d^2 u_i / d x_a d x_b)^2  (0-dim tensor).
at::Tensor bending_energy(const at::Tensor& displacement, c10::optional<c10::ArrayRef<double>> spacing = {});
// det(I + Du) per voxel: [N, *S]. Spacing-invariant, hence no spacing argument.
at::Tensor jacobian_determinant(const at::Tensor& displacement);
// mean over n and voxels of relu(threshold - det(I + Du))^2  (0-dim tensor).
at::Tensor jacobian_penalty(const at::Tensor& displacement, double threshold = 0.5);

}  // namespace ops
}  // namespace itk_odereg
