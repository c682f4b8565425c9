// AVX2 paths of the 3D float warp / sample_at kernels: eight voxels of one row of the
// displacement's grid at a time, for the forward, for the backward that needs only the
// displacement's gradient (the image warp of a registration), and for the backward that needs
// both (sample_at of the velocity's control field).
//
// Why by hand: the scalar kernels spend most of their time on the per-voxel index and
// weight arithmetic, not on the loads (about 15 ns per voxel and channel on one core
// here); compilers do not vectorize across voxels there because every voxel branches on
// its cell. Here a block of eight voxels whose cells are all interior (warp_cell.h) runs
// the same arithmetic lane-wise, with gathers; the voxels of a block whose cells are not
// interior (a row's first voxels on the border, NaN), and a row's last few voxels, run the
// scalar per-voxel code unchanged.
//
// Bits: every lane performs the scalar code's operations in the scalar code's order,
// with separate multiplies and adds (AVX2 without FMA, as the scalar build). So the
// results are the scalar kernels' bits, for any thread count.
// `ITK_ODEREG_SCALAR_KERNELS=1` in the environment turns these paths off (read once per
// process), which is how the tests compare the two.
#pragma once

#include <cstdint>
#include <cstdlib>

#include "../common/warp_voxel.h"

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define ODEREG_HAVE_AVX2_ROWS 1
#include <immintrin.h>
#else
#define ODEREG_HAVE_AVX2_ROWS 0
#endif

namespace itk_odereg {
namespace ops {

// Channels of an image whose gradient the row kernels accumulate in registers (backward_both_row).
constexpr int64_t kRowsMaxChannels = 4;

// Whether the AVX2 row kernels may run for an image of `image_numel` voxels per channel:
// the CPU has AVX2, the environment does not ask for the scalar kernels, and offsets into
// one channel fit 32-bit gather indices.
inline bool avx2_rows_enabled(int64_t image_numel) {
#if ODEREG_HAVE_AVX2_ROWS
  static const bool enabled = __builtin_cpu_supports("avx2") && std::getenv("ITK_ODEREG_SCALAR_KERNELS") == nullptr;
  return enabled && image_numel < (int64_t(1) << 30);
#else
  (void)image_numel;
  return false;
#endif
}

#if ODEREG_HAVE_AVX2_ROWS

namespace avx2_rows {

// The cells of eight voxels p .. p + 7 of one row (x indices ix .. ix + 7): lower-corner
// offsets and fractions per axis, as locate_interior_cell computes them. Returns the mask
// of the lanes whose cells are interior (bit k: voxel p + k; NaN fails the comparisons).
// The other lanes get base 0, a valid cell whenever any lane is interior (every axis then
// has 2 samples at least), so that their gathers stay inside the image; the callers
// redo those voxels with the scalar code.
struct Cells {
  __m256i base;
  __m256 fz, fy, fx;
};

__attribute__((target("avx2"))) inline int locate(const float* disp_n, const WarpGrids<3, float>& w, int64_t p,
                                                   int64_t iz, int64_t iy, int64_t ix, Padding padding, Cells& cells) {
  const int64_t numel = w.out.numel;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 lanes = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  // (index + u) * scale per axis; the x indices ix + k are exact in float here (< 2^24).
  const __m256 x_z = _mm256_mul_ps(_mm256_add_ps(_mm256_set1_ps(static_cast<float>(iz)), _mm256_loadu_ps(disp_n + p)),
                                   _mm256_set1_ps(w.scale[0]));
  const __m256 x_y = _mm256_mul_ps(
      _mm256_add_ps(_mm256_set1_ps(static_cast<float>(iy)), _mm256_loadu_ps(disp_n + numel + p)),
      _mm256_set1_ps(w.scale[1]));
  const __m256 x_x = _mm256_mul_ps(
      _mm256_add_ps(_mm256_add_ps(_mm256_set1_ps(static_cast<float>(ix)), lanes), _mm256_loadu_ps(disp_n + 2 * numel + p)),
      _mm256_set1_ps(w.scale[2]));
  __m256 inside = _mm256_cmp_ps(x_z, _mm256_set1_ps(static_cast<float>(w.image.size[0] - 1)), _CMP_LT_OQ);
  inside = _mm256_and_ps(inside, _mm256_cmp_ps(x_y, _mm256_set1_ps(static_cast<float>(w.image.size[1] - 1)), _CMP_LT_OQ));
  inside = _mm256_and_ps(inside, _mm256_cmp_ps(x_x, _mm256_set1_ps(static_cast<float>(w.image.size[2] - 1)), _CMP_LT_OQ));
  // The lower end as in locate_interior_cell: open with border padding, closed with zeros.
  const bool border = padding == Padding::Border;
  const __m256 above_z = border ? _mm256_cmp_ps(x_z, zero, _CMP_GT_OQ) : _mm256_cmp_ps(x_z, zero, _CMP_GE_OQ);
  const __m256 above_y = border ? _mm256_cmp_ps(x_y, zero, _CMP_GT_OQ) : _mm256_cmp_ps(x_y, zero, _CMP_GE_OQ);
  const __m256 above_x = border ? _mm256_cmp_ps(x_x, zero, _CMP_GT_OQ) : _mm256_cmp_ps(x_x, zero, _CMP_GE_OQ);
  inside = _mm256_and_ps(inside, _mm256_and_ps(above_z, _mm256_and_ps(above_y, above_x)));
  const int mask = _mm256_movemask_ps(inside);
  if (mask == 0) return 0;
  // x >= 0: truncation is floor, as in the scalar code.
  const __m256i i_z = _mm256_cvttps_epi32(x_z), i_y = _mm256_cvttps_epi32(x_y), i_x = _mm256_cvttps_epi32(x_x);
  cells.fz = _mm256_sub_ps(x_z, _mm256_cvtepi32_ps(i_z));
  cells.fy = _mm256_sub_ps(x_y, _mm256_cvtepi32_ps(i_y));
  cells.fx = _mm256_sub_ps(x_x, _mm256_cvtepi32_ps(i_x));
  cells.base = _mm256_add_epi32(
      _mm256_add_epi32(_mm256_mullo_epi32(i_z, _mm256_set1_epi32(static_cast<int>(w.image.stride[0]))),
                       _mm256_mullo_epi32(i_y, _mm256_set1_epi32(static_cast<int>(w.image.stride[1])))),
      i_x);
  cells.base = _mm256_and_si256(cells.base, _mm256_castps_si256(inside));
  return mask;
}

__attribute__((target("avx2"))) inline __m256 lerp8(__m256 a, __m256 b, __m256 t) {
  return _mm256_add_ps(a, _mm256_mul_ps(t, _mm256_sub_ps(b, a)));
}

// The eight corners of the cells in one channel, in warp_cell.h's order.
struct Corners {
  __m256 v000, v001, v010, v011, v100, v101, v110, v111;
};

__attribute__((target("avx2"))) inline Corners gather(const float* image_c, const Cells& cells, int64_t sy,
                                                      int64_t sz) {
  const __m256i b = cells.base;
  const __m256i one = _mm256_set1_epi32(1), y = _mm256_set1_epi32(static_cast<int>(sy));
  const __m256i z = _mm256_set1_epi32(static_cast<int>(sz));
  const __m256i by = _mm256_add_epi32(b, y), bz = _mm256_add_epi32(b, z), bzy = _mm256_add_epi32(bz, y);
  Corners c;
  c.v000 = _mm256_i32gather_ps(image_c, b, 4);
  c.v001 = _mm256_i32gather_ps(image_c, _mm256_add_epi32(b, one), 4);
  c.v010 = _mm256_i32gather_ps(image_c, by, 4);
  c.v011 = _mm256_i32gather_ps(image_c, _mm256_add_epi32(by, one), 4);
  c.v100 = _mm256_i32gather_ps(image_c, bz, 4);
  c.v101 = _mm256_i32gather_ps(image_c, _mm256_add_epi32(bz, one), 4);
  c.v110 = _mm256_i32gather_ps(image_c, bzy, 4);
  c.v111 = _mm256_i32gather_ps(image_c, _mm256_add_epi32(bzy, one), 4);
  return c;
}

// warp_forward_point for `count` voxels of one row, starting at voxel p = (iz, iy, ix).
__attribute__((target("avx2"))) inline void forward_row(const float* __restrict__ image_n, const float* disp_n,
                                                        float* __restrict__ out_n, const WarpGrids<3, float>& w,
                                                        int64_t channels, int64_t p, int64_t iz, int64_t iy,
                                                        int64_t ix, int64_t count, Padding padding) {
  const int64_t sy = w.image.stride[1], sz = w.image.stride[0];
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    Cells cells;
    const int interior = locate(disp_n, w, p + k, iz, iy, ix + k, padding, cells);
    if (interior != 0) {
      for (int64_t ch = 0; ch < channels; ++ch) {
        const Corners v = gather(image_n + ch * w.image.numel, cells, sy, sz);
        const __m256 c00 = lerp8(v.v000, v.v001, cells.fx), c01 = lerp8(v.v010, v.v011, cells.fx);
        const __m256 c10 = lerp8(v.v100, v.v101, cells.fx), c11 = lerp8(v.v110, v.v111, cells.fx);
        _mm256_storeu_ps(out_n + ch * w.out.numel + p + k,
                         lerp8(lerp8(c00, c01, cells.fy), lerp8(c10, c11, cells.fy), cells.fz));
      }
    }
    // The other lanes (a row's first voxels on the border, say) are overwritten by the scalar code.
    for (int64_t j = 0; j < 8; ++j) {
      if ((interior >> j) & 1) continue;
      const int64_t index[3] = {iz, iy, ix + k + j};
      warp_forward_point<3, float>(image_n, disp_n, out_n, w, channels, p + k + j, index, padding);
    }
  }
  for (; k < count; ++k) {
    const int64_t index[3] = {iz, iy, ix + k};
    warp_forward_point<3, float>(image_n, disp_n, out_n, w, channels, p + k, index, padding);
  }
}

// The displacement's gradient of the eight voxels pk .. pk + 7 of a row (interior_backward's
// arithmetic lane-wise, over the channels), stored to grad_disp_n; the lanes whose cells are
// not interior get values the callers overwrite with the scalar code's.
__attribute__((target("avx2"))) inline void disp_gradient_block(const float* grad_out_n, const float* image_n,
                                                                float* grad_disp_n, const WarpGrids<3, float>& w,
                                                                int64_t channels, int64_t pk, const Cells& cells) {
  const int64_t sy = w.image.stride[1], sz = w.image.stride[0];
  const int64_t numel = w.out.numel;
  __m256 g_z = _mm256_setzero_ps(), g_y = _mm256_setzero_ps(), g_x = _mm256_setzero_ps();
  for (int64_t ch = 0; ch < channels; ++ch) {
    const __m256 go = _mm256_loadu_ps(grad_out_n + ch * numel + pk);
    const Corners v = gather(image_n + ch * w.image.numel, cells, sy, sz);
    const __m256 e00 = _mm256_sub_ps(v.v001, v.v000), e01 = _mm256_sub_ps(v.v011, v.v010);
    const __m256 e10 = _mm256_sub_ps(v.v101, v.v100), e11 = _mm256_sub_ps(v.v111, v.v110);
    const __m256 c00 = _mm256_add_ps(v.v000, _mm256_mul_ps(cells.fx, e00));
    const __m256 c01 = _mm256_add_ps(v.v010, _mm256_mul_ps(cells.fx, e01));
    const __m256 c10 = _mm256_add_ps(v.v100, _mm256_mul_ps(cells.fx, e10));
    const __m256 c11 = _mm256_add_ps(v.v110, _mm256_mul_ps(cells.fx, e11));
    g_x = _mm256_add_ps(g_x, _mm256_mul_ps(go, lerp8(lerp8(e00, e01, cells.fy), lerp8(e10, e11, cells.fy), cells.fz)));
    g_y = _mm256_add_ps(g_y, _mm256_mul_ps(go, lerp8(_mm256_sub_ps(c01, c00), _mm256_sub_ps(c11, c10), cells.fz)));
    g_z = _mm256_add_ps(g_z, _mm256_mul_ps(go, _mm256_sub_ps(lerp8(c10, c11, cells.fy), lerp8(c00, c01, cells.fy))));
  }
  _mm256_storeu_ps(grad_disp_n + pk, _mm256_mul_ps(g_z, _mm256_set1_ps(w.scale[0])));
  _mm256_storeu_ps(grad_disp_n + numel + pk, _mm256_mul_ps(g_y, _mm256_set1_ps(w.scale[1])));
  _mm256_storeu_ps(grad_disp_n + 2 * numel + pk, _mm256_mul_ps(g_x, _mm256_set1_ps(w.scale[2])));
}

// warp_backward_point for `count` voxels of one row when only the displacement's gradient
// is needed (the image warp of a registration: the moving image is data). With the image's
// gradient too, backward_both_row (below).
__attribute__((target("avx2"))) inline void backward_disp_row(const float* grad_out_n, const float* image_n,
                                                              const float* disp_n, float* grad_disp_n,
                                                              const WarpGrids<3, float>& w, int64_t channels,
                                                              int64_t p, int64_t iz, int64_t iy, int64_t ix,
                                                              int64_t count, Padding padding) {
  auto no_scatter = [](int64_t, int64_t, float) {};
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    Cells cells;
    const int interior = locate(disp_n, w, p + k, iz, iy, ix + k, padding, cells);
    if (interior != 0) {
      disp_gradient_block(grad_out_n, image_n, grad_disp_n, w, channels, p + k, cells);
    }
    // The other lanes are overwritten by the scalar code.
    for (int64_t j = 0; j < 8; ++j) {
      if ((interior >> j) & 1) continue;
      const int64_t index[3] = {iz, iy, ix + k + j};
      warp_backward_point<3, float>(grad_out_n, image_n, disp_n, grad_disp_n, w, channels, p + k + j, index, padding,
                                    false, true, no_scatter);
    }
  }
  for (; k < count; ++k) {
    const int64_t index[3] = {iz, iy, ix + k};
    warp_backward_point<3, float>(grad_out_n, image_n, disp_n, grad_disp_n, w, channels, p + k, index, padding, false,
                                  true, no_scatter);
  }
}

// The image gradient's scatter into one cell, held in registers while consecutive voxels of
// a row fall in that cell: one vector per channel, lane k the cell's corner k in warp_cell.h's
// order (x fastest, then y, then z), so corners k and k + 1 are neighbours in memory. The
// vectors start as the target's current values and every voxel's terms are added to them in
// turn, as the scalar kernel adds them to memory: the same additions in the same order, so
// the same bits, with one load and one store per corner per run instead of one per voxel.
struct PendingCell {
  static constexpr int64_t kMaxChannels = kRowsMaxChannels;
  int64_t base = -1;
  __m256 sum[kMaxChannels];
};

__attribute__((target("avx2"))) inline __m128 load_pairs(const float* a, const float* b) {
  return _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(a))), reinterpret_cast<const __m64*>(b));
}

__attribute__((target("avx2"))) inline void open_cell(PendingCell& cell, int64_t base, const float* target_n,
                                                      int64_t image_numel, int64_t channels, int64_t sy, int64_t sz) {
  cell.base = base;
  for (int64_t ch = 0; ch < channels; ++ch) {
    const float* t = target_n + ch * image_numel + base;
    cell.sum[ch] = _mm256_set_m128(load_pairs(t + sz, t + sz + sy), load_pairs(t, t + sy));
  }
}

__attribute__((target("avx2"))) inline void close_cell(PendingCell& cell, float* target_n, int64_t image_numel,
                                                       int64_t channels, int64_t sy, int64_t sz) {
  if (cell.base < 0) return;
  for (int64_t ch = 0; ch < channels; ++ch) {
    float* t = target_n + ch * image_numel + cell.base;
    const __m128 low = _mm256_castps256_ps128(cell.sum[ch]), high = _mm256_extractf128_ps(cell.sum[ch], 1);
    _mm_storel_pi(reinterpret_cast<__m64*>(t), low);
    _mm_storeh_pi(reinterpret_cast<__m64*>(t + sy), low);
    _mm_storel_pi(reinterpret_cast<__m64*>(t + sz), high);
    _mm_storeh_pi(reinterpret_cast<__m64*>(t + sz + sy), high);
  }
  cell.base = -1;
}

// warp_backward_point for `count` voxels of one row when both gradients are needed (sample_at
// of the velocity's control field, a small image many voxels sample). The displacement's
// gradient is backward_disp_row's. The image gradient is the scatter of interior_backward:
// voxel by voxel, channel by channel, ((g w_z) w_y) w_x added to each corner, held in a
// PendingCell while the voxels stay in one cell (about two on the flow grid, twice as fine as
// the control grid). The scalar voxels of a block write memory directly, so the pending cell
// is written back before them. `channels` is at most PendingCell::kMaxChannels.
__attribute__((target("avx2"))) inline void backward_both_row(const float* grad_out_n, const float* image_n,
                                                              const float* disp_n, float* grad_disp_n,
                                                              float* target_n, const WarpGrids<3, float>& w,
                                                              int64_t channels, int64_t p, int64_t iz, int64_t iy,
                                                              int64_t ix, int64_t count, Padding padding) {
  const int64_t sy = w.image.stride[1], sz = w.image.stride[0];
  const int64_t numel = w.out.numel, image_numel = w.image.numel;
  const __m256 one = _mm256_set1_ps(1.f);
  auto scatter = [&](int64_t offset, int64_t ch, float value) { target_n[ch * image_numel + offset] += value; };
  PendingCell pending;
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    Cells cells;
    const int interior = locate(disp_n, w, p + k, iz, iy, ix + k, padding, cells);
    float go_lanes[PendingCell::kMaxChannels][8];
    float fz[8], fy[8], fx[8], wz0[8], wy0[8], wx0[8];
    int32_t bases[8];
    if (interior != 0) {
      disp_gradient_block(grad_out_n, image_n, grad_disp_n, w, channels, p + k, cells);
      for (int64_t ch = 0; ch < channels; ++ch) {
        _mm256_storeu_ps(go_lanes[ch], _mm256_loadu_ps(grad_out_n + ch * numel + p + k));
      }
      // Per lane: the weights of interior_backward as vectors over the corners (lane k of
      // corner_z is the z weight of corner k, and so on).
      _mm256_storeu_ps(fz, cells.fz);
      _mm256_storeu_ps(fy, cells.fy);
      _mm256_storeu_ps(fx, cells.fx);
      _mm256_storeu_ps(wz0, _mm256_sub_ps(one, cells.fz));
      _mm256_storeu_ps(wy0, _mm256_sub_ps(one, cells.fy));
      _mm256_storeu_ps(wx0, _mm256_sub_ps(one, cells.fx));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(bases), cells.base);
    }
    // The voxels in order, as the scalar kernel adds them: a neighbour's cell shares corners.
    for (int j = 0; j < 8; ++j) {
      if (!((interior >> j) & 1)) {
        // Not interior: the scalar code, both gradients, straight into memory.
        close_cell(pending, target_n, image_numel, channels, sy, sz);
        const int64_t index[3] = {iz, iy, ix + k + j};
        warp_backward_point<3, float>(grad_out_n, image_n, disp_n, grad_disp_n, w, channels, p + k + j, index,
                                      padding, true, true, scatter);
        continue;
      }
      if (bases[j] != pending.base) {
        close_cell(pending, target_n, image_numel, channels, sy, sz);
        open_cell(pending, bases[j], target_n, image_numel, channels, sy, sz);
      }
      const __m256 corner_z = _mm256_blend_ps(_mm256_set1_ps(wz0[j]), _mm256_set1_ps(fz[j]), 0xF0);
      const __m256 corner_y = _mm256_blend_ps(_mm256_set1_ps(wy0[j]), _mm256_set1_ps(fy[j]), 0xCC);
      const __m256 corner_x = _mm256_blend_ps(_mm256_set1_ps(wx0[j]), _mm256_set1_ps(fx[j]), 0xAA);
      for (int64_t ch = 0; ch < channels; ++ch) {
        const __m256 value =
            _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(go_lanes[ch][j]), corner_z), corner_y), corner_x);
        pending.sum[ch] = _mm256_add_ps(pending.sum[ch], value);
      }
    }
  }
  close_cell(pending, target_n, image_numel, channels, sy, sz);
  for (; k < count; ++k) {
    const int64_t index[3] = {iz, iy, ix + k};
    warp_backward_point<3, float>(grad_out_n, image_n, disp_n, grad_disp_n, w, channels, p + k, index, padding, true,
                                  true, scatter);
  }
}

}  // namespace avx2_rows

#endif  // ODEREG_HAVE_AVX2_ROWS

}  // namespace ops
}  // namespace itk_odereg
