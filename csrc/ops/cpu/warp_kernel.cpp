// CPU kernels of itk_odereg::warp and itk_odereg::sample_at (warp from another
// corner-aligned grid of the box) and their backwards: one implementation.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/checks.h"
#include "../common/warp_voxel.h"
#include "warp_rows_avx2.h"

namespace itk_odereg {
namespace ops {

namespace {

// Voxels per task: large enough to amortize scheduling, small enough to balance.
constexpr int64_t kGrain = 4096;

// Moves the walk (t, voxel p of batch element n, its index) on by `count` voxels of one
// row (count <= the voxels left in the row).
template <int NDIM>
void advance(const SpatialGeometry<NDIM>& g, int64_t count, int64_t& t, int64_t& p, int64_t& n, int64_t index[NDIM]) {
  t += count;
  index[NDIM - 1] += count - 1;
  next_index<NDIM>(g, index);
  p += count;
  if (p == g.numel) {
    p = 0;
    ++n;
  }
}

// The AVX2 row kernels (warp_rows_avx2.h) serve 3D float warps on CPUs that have AVX2.
template <int NDIM, typename scalar_t>
bool use_avx2_rows(const WarpGrids<NDIM, scalar_t>& w) {
  return NDIM == 3 && std::is_same_v<scalar_t, float> && avx2_rows_enabled(w.image.numel);
}

// Output: the image's batch and channels on the displacement's grid.
at::Tensor output_like(const at::Tensor& image, const at::Tensor& disp) {
  std::vector<int64_t> sizes(disp.sizes().begin(), disp.sizes().end());
  sizes[1] = image.size(1);
  return at::empty(sizes, image.options());
}

template <int NDIM>
at::Tensor warp_forward_impl(const at::Tensor& image_in, const at::Tensor& disp_in, Padding padding) {
  const at::Tensor image = image_in.contiguous();
  const at::Tensor disp = disp_in.contiguous();
  at::Tensor out = output_like(image, disp);
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1);
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "itk_odereg::warp", [&] {
    const auto w = make_warp_grids<NDIM, scalar_t>(image.sizes().slice(2), disp.sizes().slice(2));
    const scalar_t* img = image.data_ptr<scalar_t>();
    const scalar_t* u = disp.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t numel = w.out.numel;
    const bool rows = use_avx2_rows<NDIM, scalar_t>(w);
    at::parallel_for(0, batch * numel, kGrain, [&](int64_t begin, int64_t end) {
      int64_t n = begin / numel, p = begin % numel;
      int64_t index[NDIM];
      w.out.unravel(p, index);
      for (int64_t t = begin; t < end;) {
#if ODEREG_HAVE_AVX2_ROWS
        if constexpr (NDIM == 3 && std::is_same_v<scalar_t, float>) {
          if (rows) {
            // The rest of this row (within the chunk) in one call.
            const int64_t count = std::min(end - t, w.out.size[2] - index[2]);
            avx2_rows::forward_row(img + n * channels * w.image.numel, u + n * NDIM * numel, o + n * channels * numel,
                                   w, channels, p, index[0], index[1], index[2], count, padding);
            advance(w.out, count, t, p, n, index);
            continue;
          }
        }
#endif
        warp_forward_point<NDIM, scalar_t>(img + n * channels * w.image.numel, u + n * NDIM * numel,
                                           o + n * channels * numel, w, channels, p, index, padding);
        advance(w.out, 1, t, p, n, index);
      }
    });
  });
  return out;
}

template <int NDIM>
std::tuple<at::Tensor, at::Tensor> warp_backward_impl(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                      const at::Tensor& disp_in, Padding padding, bool need_image,
                                                      bool need_disp) {
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor disp = disp_in.contiguous();
  at::Tensor grad_image = need_image ? at::zeros(image.sizes(), image.options()) : at::empty({0}, image.options());
  at::Tensor grad_disp = need_disp ? at::empty(disp.sizes(), disp.options()) : at::empty({0}, disp.options());
  if (image.numel() == 0 || disp.numel() == 0 || (!need_image && !need_disp)) {
    if (need_disp) grad_disp.zero_();
    return {grad_image, grad_disp};
  }
  const int64_t channels = image.size(1);
  const int64_t image_numel = image.numel();
  const int64_t out_numel = disp.numel() / NDIM;  // voxels of the displacement's grid, all batch elements
  // The image gradient is a scatter: every thread but the first accumulates
  // into a private copy, summed at the end. This keeps the result free of
  // races and deterministic for a given thread count, at one image-sized
  // buffer per extra thread (small when the image is a coarse grid: sample_at).
  const int64_t work = out_numel;
  const int64_t threads =
      at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), (work + kGrain - 1) / kGrain);
  at::Tensor private_grads;
  if (need_image && threads > 1) private_grads = at::zeros({threads - 1, image_numel}, image.options());

  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "itk_odereg::_warp_backward", [&] {
    const auto w = make_warp_grids<NDIM, scalar_t>(image.sizes().slice(2), disp.sizes().slice(2));
    const int64_t numel = w.out.numel;
    const scalar_t* go = grad.data_ptr<scalar_t>();
    const scalar_t* img = image.data_ptr<scalar_t>();
    const scalar_t* u = disp.data_ptr<scalar_t>();
    scalar_t* gi = need_image ? grad_image.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = private_grads.defined() ? private_grads.data_ptr<scalar_t>() : nullptr;
    scalar_t* gu = need_disp ? grad_disp.data_ptr<scalar_t>() : nullptr;
    // The row kernels for the displacement's gradient, alone or with the image's of a few
    // channels (warp_rows_avx2.h).
    const bool rows = use_avx2_rows<NDIM, scalar_t>(w) && need_disp && !need_image;
    const bool rows_both = use_avx2_rows<NDIM, scalar_t>(w) && need_disp && need_image &&
                           channels <= kRowsMaxChannels;
    auto body = [&](int64_t begin, int64_t end) {
      const int64_t tid = threads > 1 ? at::get_thread_num() : 0;
      TORCH_INTERNAL_ASSERT(tid < threads, "itk_odereg::_warp_backward: unexpected thread id");
      scalar_t* target = tid == 0 ? gi : gp + (tid - 1) * image_numel;
      int64_t n = begin / numel, p = begin % numel;
      int64_t index[NDIM];
      w.out.unravel(p, index);
      for (int64_t t = begin; t < end;) {
        scalar_t* target_n = need_image ? target + n * channels * w.image.numel : nullptr;
#if ODEREG_HAVE_AVX2_ROWS
        if constexpr (NDIM == 3 && std::is_same_v<scalar_t, float>) {
          if (rows) {
            const int64_t count = std::min(end - t, w.out.size[2] - index[2]);
            avx2_rows::backward_disp_row(go + n * channels * numel, img + n * channels * w.image.numel,
                                         u + n * NDIM * numel, gu + n * NDIM * numel, w, channels, p, index[0],
                                         index[1], index[2], count, padding);
            advance(w.out, count, t, p, n, index);
            continue;
          }
          if (rows_both) {
            const int64_t count = std::min(end - t, w.out.size[2] - index[2]);
            avx2_rows::backward_both_row(go + n * channels * numel, img + n * channels * w.image.numel,
                                         u + n * NDIM * numel, gu + n * NDIM * numel, target_n, w, channels, p,
                                         index[0], index[1], index[2], count, padding);
            advance(w.out, count, t, p, n, index);
            continue;
          }
        }
#endif
        auto scatter = [&](int64_t offset, int64_t ch, scalar_t value) {
          target_n[ch * w.image.numel + offset] += value;
        };
        warp_backward_point<NDIM, scalar_t>(go + n * channels * numel, img + n * channels * w.image.numel,
                                            u + n * NDIM * numel, need_disp ? gu + n * NDIM * numel : nullptr,
                                            w, channels, p, index, padding, need_image, need_disp, scatter);
        advance(w.out, 1, t, p, n, index);
      }
    };
    if (threads > 1) {
      // Split into exactly `threads` chunks so each maps to one thread id.
      at::parallel_for(0, work, (work + threads - 1) / threads, body);
    } else {
      body(0, work);
    }
  });
  if (private_grads.defined()) grad_image.view({-1}).add_(private_grads.sum(0));
  return {grad_image, grad_disp};
}

// warp and sample_at run the same kernels; they differ only in the grids their checks accept.
at::Tensor forward_by_dim(const at::Tensor& image, const at::Tensor& displacement, Padding pad) {
  return displacement.size(1) == 3 ? warp_forward_impl<3>(image, displacement, pad)
                                   : warp_forward_impl<2>(image, displacement, pad);
}

std::tuple<at::Tensor, at::Tensor> backward_by_dim(const at::Tensor& grad_output, const at::Tensor& image,
                                                   const at::Tensor& displacement, Padding pad, bool need_image,
                                                   bool need_disp) {
  return displacement.size(1) == 3 ? warp_backward_impl<3>(grad_output, image, displacement, pad, need_image, need_disp)
                                   : warp_backward_impl<2>(grad_output, image, displacement, pad, need_image, need_disp);
}

at::Tensor warp_cpu(const at::Tensor& image, const at::Tensor& displacement, c10::string_view padding) {
  check_image_and_displacement(image, displacement, "warp");
  return forward_by_dim(image, displacement, parse_padding(padding, "warp"));
}

std::tuple<at::Tensor, at::Tensor> warp_backward_cpu(const at::Tensor& grad_output, const at::Tensor& image,
                                                     const at::Tensor& displacement, c10::string_view padding,
                                                     bool image_requires_grad, bool displacement_requires_grad) {
  check_warp_backward_args(grad_output, image, displacement);
  return backward_by_dim(grad_output, image, displacement, parse_padding(padding, "_warp_backward"),
                         image_requires_grad, displacement_requires_grad);
}

at::Tensor sample_at_cpu(const at::Tensor& image, const at::Tensor& displacement, c10::string_view padding) {
  check_aligned_image_and_displacement(image, displacement, "sample_at");
  return forward_by_dim(image, displacement, parse_padding(padding, "sample_at"));
}

std::tuple<at::Tensor, at::Tensor> sample_at_backward_cpu(const at::Tensor& grad_output, const at::Tensor& image,
                                                          const at::Tensor& displacement, c10::string_view padding,
                                                          bool image_requires_grad, bool displacement_requires_grad) {
  check_sample_at_backward_args(grad_output, image, displacement);
  return backward_by_dim(grad_output, image, displacement, parse_padding(padding, "_sample_at_backward"),
                         image_requires_grad, displacement_requires_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(itk_odereg, CPU, m) {
  m.impl("warp", &warp_cpu);
  m.impl("_warp_backward", &warp_backward_cpu);
  m.impl("sample_at", &sample_at_cpu);
  m.impl("_sample_at_backward", &sample_at_backward_cpu);
}

}  // namespace ops
}  // namespace itk_odereg
