// im2col and its adjoint col2im in a channels-last (NHWC) layout, shared by the GEMM path
// (gemm_columns.h, ops/) and the tile kernel's lowered few-channel layers (lowered_conv.cpp).
//
// One row holds the receptive field of one output pixel, ordered (kh, kw, c) so that each
// kernel tap copies a contiguous run of channels; out-of-bounds taps (zero padding) are zero.
#pragma once

#include "../conv.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace miniplaces_ext::cpu {

// Fills col[rows][row_stride] with the receptive fields of output pixels [row0, row0 + rows)
// (numbered (n, oh, ow) across the batch), channels [c0, c0 + Cg) of the channels-last input x
// [N, H, W, C]: elements [0, patch_size) of each row, and zeros in [patch_size, row_stride)
// (row_stride >= patch_size: a reduction padded to whole tile products).
template <typename scalar_t>
void im2col(const scalar_t* x, scalar_t* col, const ConvGeometry& g, int64_t row0, int64_t rows, int64_t c0,
            int64_t row_stride) {
  const int64_t cg = g.in_channels_per_group();
  const int64_t patch = g.patch_size();
  const int64_t pixels = g.out_pixels();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = (row0 + r) / pixels;
      const int64_t oh = ((row0 + r) % pixels) / g.out_w;
      const int64_t ow = (row0 + r) % g.out_w;
      scalar_t* dst = col + r * row_stride;
      const int64_t iw0 = ow * g.stride_w - g.pad_w;  // input column of the first tap
      // With one group and undilated columns, a kernel row inside the input is one contiguous
      // run of kw * C values (a few channels: one copy instead of kw tiny ones).
      const bool row_is_one_run = cg == g.in_channels && g.dilation_w == 1 && iw0 >= 0 && iw0 + g.kernel_w <= g.in_w;
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (row_is_one_run && ih >= 0 && ih < g.in_h) {
          const scalar_t* src = x + ((n * g.in_h + ih) * g.in_w + iw0) * g.in_channels;
          std::memcpy(dst, src, g.kernel_w * cg * sizeof(scalar_t));
          dst += g.kernel_w * cg;
          continue;
        }
        for (int64_t j = 0; j < g.kernel_w; ++j, dst += cg) {
          const int64_t iw = iw0 + j * g.dilation_w;
          if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) {
            std::fill_n(dst, cg, scalar_t(0));
          } else {
            std::copy_n(x + ((n * g.in_h + ih) * g.in_w + iw) * g.in_channels + c0, cg, dst);
          }
        }
      }
      std::fill_n(dst, row_stride - patch, scalar_t(0));
    }
  });
}

// The kernel taps that reach input position `in` along one dimension, with the output position
// each comes from: in + pad - tap * dilation = out * stride, 0 <= out < out_size.
struct TapReach {
  int64_t tap, out;
};

inline void taps_reaching(int64_t in, int64_t pad, int64_t kernel, int64_t dilation, int64_t stride,
                          int64_t out_size, std::vector<TapReach>& reach) {
  reach.clear();
  for (int64_t tap = 0; tap < kernel; ++tap) {
    const int64_t t = in + pad - tap * dilation;
    if (t >= 0 && t % stride == 0 && t / stride < out_size) {
      reach.push_back({tap, t / stride});
    }
  }
}

// The adjoint of im2col: for every input pixel of images [n0, n0 + count),
// sums the dcol entries of all output pixels whose receptive field covers it
// and writes the sum to channels [c0, c0 + Cg) of the channels-last dx. The
// (tap, output position) pairs reaching each input column are listed once and
// each row's once, so the pixel loop does no divisions (AlexNet's 11x11/4
// layer, 3 channels: a division per tap and pixel took 3/4 of its grad_input).
// Each input pixel is written by one thread, without atomics: deterministic.
template <typename scalar_t>
void col2im(const scalar_t* dcol, scalar_t* dx, const ConvGeometry& g, int64_t n0, int64_t count, int64_t c0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cg = g.in_channels_per_group();
  const int64_t patch = g.patch_size();
  std::vector<int64_t> column_start(g.in_w + 1, 0);  // column iw's pairs: columns[column_start[iw] ..]
  std::vector<TapReach> columns, reach;
  for (int64_t iw = 0; iw < g.in_w; ++iw) {
    taps_reaching(iw, g.pad_w, g.kernel_w, g.dilation_w, g.stride_w, g.out_w, reach);
    columns.insert(columns.end(), reach.begin(), reach.end());
    column_start[iw + 1] = static_cast<int64_t>(columns.size());
  }
  at::parallel_for(0, count * g.in_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(cg);
    std::vector<TapReach> rows;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n_local = r / g.in_h;
      const int64_t ih = r % g.in_h;
      taps_reaching(ih, g.pad_h, g.kernel_h, g.dilation_h, g.stride_h, g.out_h, rows);
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (const TapReach& row : rows) {
          for (int64_t k = column_start[iw]; k < column_start[iw + 1]; ++k) {
            const TapReach& column = columns[k];
            const scalar_t* src = dcol + ((n_local * g.out_h + row.out) * g.out_w + column.out) * patch +
                (row.tap * g.kernel_w + column.tap) * cg;
            for (int64_t c = 0; c < cg; ++c) {
              acc[c] += static_cast<acc_t>(src[c]);
            }
          }
        }
        scalar_t* dst = dx + (((n0 + n_local) * g.in_h + ih) * g.in_w + iw) * g.in_channels + c0;
        for (int64_t c = 0; c < cg; ++c) {
          dst[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

} // namespace miniplaces_ext::cpu
