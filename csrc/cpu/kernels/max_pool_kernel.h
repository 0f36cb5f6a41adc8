// 2-d max-pooling of channels_last (NHWC) float32 or bfloat16 images: each output pixel's C
// channels are the maxima over its window's input pixels, C contiguous values at a time, so the
// loop over channels is one vector loop (compiled per ISA level by its kernels_<level>.cpp). The
// maxima are taken in float32 (a bfloat16 widens exactly and the maximum is one of the inputs, so
// narrowing it back is exact) with torch's rule, window rows then columns: a value replaces the
// maximum if it is greater or NaN, so the first NaN of a window wins and -0 / +0 keep torch's order.
// Padding is never read (a window always holds an input pixel: the op checks padding <= kernel/2).
#pragma once

#include "../pool_geometry.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <bit>
#include <limits>

namespace miniplaces_ext::cpu {
namespace {

template <typename In>
struct MaxPoolNhwc {
  static float widen(float v) { return v; }
  static float widen(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }
  static void narrow(float v, float* out) { *out = v; }
  static void narrow(float v, uint16_t* out) {
    *out = static_cast<uint16_t>(std::bit_cast<uint32_t>(v) >> 16);  // exact: v is a widened bfloat16
  }

  // Channels per pass over a window: 64 float32 maxima stay in registers (4 AVX-512 or 8 AVX2
  // vectors) while the window's pixels are read.
  static constexpr int64_t kChunk = 64;

  // o[0, kCount) = the maxima of channels [c, c + kCount) over output pixel (n, oh, ow)'s window.
  template <int64_t kCount>
  static void pool_channels(const In* x, const PoolGeometry& g, int64_t n, int64_t oh, int64_t ow, int64_t c, In* o) {
    float m[kCount];
    for (int64_t k = 0; k < kCount; ++k) {
      m[k] = -std::numeric_limits<float>::infinity();
    }
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        continue;
      }
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) {
          continue;
        }
        const In* p = x + ((n * g.in_h + ih) * g.in_w + iw) * g.channels + c;
        for (int64_t k = 0; k < kCount; ++k) {
          const float v = widen(p[k]);
          m[k] = (v > m[k] || v != v) ? v : m[k];
        }
      }
    }
    for (int64_t k = 0; k < kCount; ++k) {
      narrow(m[k], o + k);
    }
  }

  // out [N, Ho, Wo, C] from x [N, H, W, C], both contiguous NHWC (channels_last) of type In.
  static void run(const at::Tensor& x_tensor, const PoolGeometry& g, const at::Tensor& out_tensor) {
    const In* x = static_cast<const In*>(x_tensor.data_ptr());
    In* out = static_cast<In*>(out_tensor.data_ptr());
    const int64_t C = g.channels;
    at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / g.out_h, oh = row % g.out_h;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          In* o = out + (row * g.out_w + ow) * C;
          int64_t c = 0;
          for (; c + kChunk <= C; c += kChunk) {
            pool_channels<kChunk>(x, g, n, oh, ow, c, o + c);
          }
          for (; c < C; ++c) {
            pool_channels<1>(x, g, n, oh, ow, c, o + c);
          }
        }
      }
    });
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
