// itk_odereg::_box_sum_: in-place box (moving window) sums over the trailing axes of a tensor.
#pragma once

#include <ATen/core/Tensor.h>

namespace itk_odereg {
namespace ops {

// Replaces x by its sums over centred windows of half-width radii[k] along the
// last radii.size() dims (zero padding outside). x must be contiguous.
void box_sum_(at::Tensor& x, at::IntArrayRef radii);

}  // namespace ops
}  // namespace itk_odereg
