// im2col in a channels-last (NHWC) layout, shared by the GEMM path (conv_kernel.cpp) and the
// tile kernel's lowered few-channel layers (lowered_conv.cpp).
//
// One row holds the receptive field of one output pixel, ordered (kh, kw, c) so that each
// kernel tap copies a contiguous run of channels; out-of-bounds taps (zero padding) are zero.
#pragma once

#include "../conv.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

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
          for (int64_t e = 0; e < g.kernel_w * cg; ++e) {
            dst[e] = src[e];
          }
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

} // namespace miniplaces_ext::cpu
