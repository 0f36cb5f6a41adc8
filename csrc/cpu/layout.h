// Layout conversions between torch's NCHW-shaped tensors and the contiguous
// NHWC buffers the CPU kernels read and write.
//
// torch's own copy of a permuted tensor walks the destination element by
// element with the source's large stride (measured here: a 32 MiB NCHW ->
// NHWC copy at 2.4 GB/s); these conversions move 4 x 4 blocks of (pixel,
// channel) through SSE registers (float32 on x86-64) or copy 16 x 16 tiles, so
// both sides are read and written a cache line at a time (layout.cpp).
#pragma once

#include "../conv.h"

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace miniplaces_ext::cpu {

// The pixels (h * step_h, w * step_w) of x [N, C, H, W] (any strides) as a
// contiguous NHWC tensor [N, ceil(H / step_h), ceil(W / step_w), C]. A view of
// x, without a copy, when x is channels_last, both steps are 1 and no dtype is
// asked for; otherwise a tiled copy that reads only the sampled pixels. With
// `dtype` (float32, for a bfloat16 or float16 x) the values are converted as
// they are copied.
at::Tensor nhwc_pixels(const at::Tensor& x, int64_t step_h = 1, int64_t step_w = 1,
                       std::optional<at::ScalarType> dtype = std::nullopt);

// dst[p * channels + c] = src[c * channel_stride + p * pixel_stride] for p < pixels,
// c < channels: one image row laid out channels innermost, copied in tiles as
// above. For kernels that lay out their input row by row as they reach it
// (direct_conv_kernel.h); T is float or uint16_t (the bits of bfloat16).
template <typename T>
void copy_pixels_to_nhwc(const T* src, int64_t channel_stride, int64_t pixel_stride, int64_t channels,
                         int64_t pixels, T* dst);

// dst[c * dst_channel_stride + p * dst_pixel_stride] = src[p * src_pixel_stride + c] for
// p < pixels, c < channels: the reverse, a row of pixels with channels innermost written out
// to any layout (an NCHW output row from a kernel's NHWC row buffer).
void copy_pixels_from_nhwc(const float* src, int64_t src_pixel_stride, int64_t channels, int64_t pixels, float* dst,
                           int64_t dst_channel_stride, int64_t dst_pixel_stride);
// The same into an NCHW row (dst_pixel_stride 1) with non-temporal stores where the CPU has
// AVX-512: whole aligned 64-byte lines of each channel's row bypass the cache (no read for
// ownership), the edges are written as above. For an output too large to stay in cache for
// whoever reads it next.
void stream_pixels_from_nhwc(const float* src, int64_t src_pixel_stride, int64_t channels, int64_t pixels,
                             float* dst, int64_t dst_channel_stride);
// The same, each value rounded to bfloat16 (to nearest even) as it is written: a bfloat16
// convolution's output rounded once, from the kernel's float32 row buffer.
void copy_pixels_from_nhwc(const float* src, int64_t src_pixel_stride, int64_t channels, int64_t pixels,
                           c10::BFloat16* dst, int64_t dst_channel_stride, int64_t dst_pixel_stride);

// Whether a tensor with strides s and `channels` channels can be read as NHWC rows in place:
// channels innermost, pixels `channels` apart (channels_last, or a row-compatible view).
inline bool nhwc_rows_in_place(const Strides4& s, int64_t channels) {
  return s.c == 1 && s.w == channels;
}

// The rows of a float32 tensor [N, C, H, W] (any strides) with channels
// innermost, a block of rows at a time: row (n, h) is [W][C], element (w, c) at
// row(n, h)[w * C + c]. Read in place when the tensor's channels are innermost
// and its pixels C apart (channels_last); otherwise each block is laid out by
// torch's threads into a buffer reused from block to block, small enough to
// stay in cache for the kernel that reads it next — instead of an NHWC copy of
// the whole tensor written to memory and read back.
class NhwcRows {
 public:
  explicit NhwcRows(const at::Tensor& x);

  // Makes rows n * H + h in [first, first + count) readable; rows of earlier blocks may be gone.
  void load(int64_t first, int64_t count);

  // Row (n, h), whose number n * H + h lies in the last block loaded.
  const float* row(int64_t n, int64_t h) const {
    return in_place_ ? x_ + n * s_.n + h * s_.h : buffer_.data() + (n * height_ + h - first_) * row_size_;
  }

 private:
  const float* x_;
  Strides4 s_;
  int64_t channels_, height_, width_, row_size_;
  bool in_place_;
  int64_t first_ = 0;
  std::vector<float> buffer_;
};

// The NHWC result y [N, H, W, C] as an NCHW-shaped tensor [N, C, H, W] in
// `format`: a view for channels_last, a tiled copy for contiguous.
at::Tensor nchw_from_nhwc(const at::Tensor& y, at::MemoryFormat format);

} // namespace miniplaces_ext::cpu
