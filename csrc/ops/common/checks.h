// Input validation shared by the CPU and CUDA entry points (host only). Each
// message names the op, the argument and what was expected, because these are
// the errors a user sees from Python, TorchScript and C++ alike.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "interp_weights.h"

namespace itk_odereg {
namespace ops {

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), "itk_odereg.", op, "(): '", name, "' is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "itk_odereg.", op, "(): '", name, "' must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_dtype_device(const at::Tensor& a, const char* name_a, const at::Tensor& b,
                                    const char* name_b, const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "itk_odereg.", op, "(): '", name_a, "' (", a.scalar_type(),
              ") and '", name_b, "' (", b.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(a.device() == b.device(), "itk_odereg.", op, "(): '", name_a, "' (", a.device(), ") and '", name_b,
              "' (", b.device(), ") must be on the same device");
}

// A displacement is [N, d, *S] with d = len(S) in {2, 3}, N >= 1, all sizes >= 1.
inline int64_t check_displacement(const at::Tensor& u, const char* op, const char* name = "displacement",
                                  int64_t min_size = 1) {
  check_floating(u, op, name);
  const int64_t ndim = u.dim() - 2;
  TORCH_CHECK(ndim == 2 || ndim == 3, "itk_odereg.", op, "(): '", name,
              "' must have shape [N, 2, H, W] (2D) or [N, 3, D, H, W] (3D), got ", u.sizes());
  TORCH_CHECK(u.size(1) == ndim, "itk_odereg.", op, "(): '", name, "' must have ", ndim,
              " channels (one per spatial dimension, tensor order) for ", ndim, "D, got shape ", u.sizes());
  TORCH_CHECK(u.size(0) >= 1, "itk_odereg.", op, "(): '", name, "' must have batch size N >= 1, got shape ",
              u.sizes());
  for (int64_t d = 2; d < u.dim(); ++d) {
    TORCH_CHECK(u.size(d) >= min_size, "itk_odereg.", op, "(): '", name, "' must have every spatial size >= ",
                min_size, ", got shape ", u.sizes());
  }
  return ndim;
}

inline Padding parse_padding(c10::string_view padding, const char* op) {
  if (padding == "zeros") return Padding::Zeros;
  if (padding == "border") return Padding::Border;
  TORCH_CHECK(false, "itk_odereg.", op, "(): 'padding' must be \"zeros\" or \"border\", got \"",
              std::string(padding), "\"");
}

// What warp and sample_at share: floating image [N, C, *S'] with the displacement's
// batch size, rank, dtype and device.
inline void check_image_like_displacement(const at::Tensor& image, const at::Tensor& displacement, const char* op) {
  check_floating(image, op, "image");
  const int64_t ndim = check_displacement(displacement, op);
  check_same_dtype_device(image, "image", displacement, "displacement", op);
  TORCH_CHECK(image.dim() == ndim + 2, "itk_odereg.", op, "(): 'image' must have shape [N, C, *S] with ", ndim,
              " spatial dims to match 'displacement' ", displacement.sizes(), ", got ", image.sizes());
  TORCH_CHECK(image.size(0) == displacement.size(0), "itk_odereg.", op,
              "(): 'image' and 'displacement' must have the same batch size N, got ", image.sizes(), " and ",
              displacement.sizes());
  TORCH_CHECK(image.size(1) >= 1, "itk_odereg.", op, "(): 'image' must have at least one channel, got ",
              image.sizes());
}

inline void check_image_and_displacement(const at::Tensor& image, const at::Tensor& displacement, const char* op) {
  check_image_like_displacement(image, displacement, op);
  for (int64_t d = 2; d < image.dim(); ++d) {
    TORCH_CHECK(image.size(d) == displacement.size(d), "itk_odereg.", op,
                "(): 'image' and 'displacement' must have the same spatial size, got ", image.sizes(), " and ",
                displacement.sizes());
  }
}

inline void check_warp_backward_args(const at::Tensor& grad_output, const at::Tensor& image,
                                     const at::Tensor& displacement) {
  check_image_and_displacement(image, displacement, "_warp_backward");
  check_same_dtype_device(grad_output, "grad_output", image, "image", "_warp_backward");
  TORCH_CHECK(grad_output.sizes() == image.sizes(), "itk_odereg._warp_backward(): 'grad_output' must have the shape of 'image' ",
              image.sizes(), ", got ", grad_output.sizes());
}

// sample_at: the image may be on another corner-aligned grid of the box, but an
// axis of one sample has no extent to align, so it must then be one on both.
inline void check_aligned_image_and_displacement(const at::Tensor& image, const at::Tensor& displacement,
                                                 const char* op) {
  check_image_like_displacement(image, displacement, op);
  for (int64_t d = 2; d < image.dim(); ++d) {
    TORCH_CHECK(image.size(d) == displacement.size(d) || (image.size(d) >= 2 && displacement.size(d) >= 2),
                "itk_odereg.", op, "(): spatial dim ", d - 2, " of 'image' ", image.sizes(), " and 'displacement' ",
                displacement.sizes(), " must be equal, or both at least 2 (corner-aligned grids of one box)");
  }
}

inline void check_sample_at_backward_args(const at::Tensor& grad_output, const at::Tensor& image,
                                          const at::Tensor& displacement) {
  check_aligned_image_and_displacement(image, displacement, "_sample_at_backward");
  check_same_dtype_device(grad_output, "grad_output", image, "image", "_sample_at_backward");
  TORCH_CHECK(grad_output.dim() == image.dim() && grad_output.size(0) == image.size(0) &&
                  grad_output.size(1) == image.size(1) &&
                  grad_output.sizes().slice(2) == displacement.sizes().slice(2),
              "itk_odereg._sample_at_backward(): 'grad_output' must have shape [N, C, *S] of 'image' channels on "
              "the grid of 'displacement', got ", grad_output.sizes());
}

// Control grid [N, d, *G] of a cubic B-spline with integer spacing s (voxels)
// covering a dense grid of `shape`: G = floor((S - 1) / s) + 4 per axis.
inline int64_t bspline_control_size(int64_t dense_size, int64_t spacing) {
  return (dense_size - 1) / spacing + 4;
}

}  // namespace ops
}  // namespace itk_odereg
