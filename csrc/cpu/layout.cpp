// Tiled layout conversions (see layout.h).
#include "layout.h"

#include "../conv.h"
#include "cpu_info.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace miniplaces_ext::cpu {
namespace {

#if defined(__SSE2__)
// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 4: a 4 x 4 block of 4-byte words
// transposed in SSE registers.
template <typename T>
void transpose_4x4(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  static_assert(sizeof(T) == 4);
  const auto* s = reinterpret_cast<const float*>(src);
  auto* d = reinterpret_cast<float*>(dst);
  __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + src_stride), r2 = _mm_loadu_ps(s + 2 * src_stride),
         r3 = _mm_loadu_ps(s + 3 * src_stride);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(d, r0);
  _mm_storeu_ps(d + dst_stride, r1);
  _mm_storeu_ps(d + 2 * dst_stride, r2);
  _mm_storeu_ps(d + 3 * dst_stride, r3);
}

// The same for an 8 x 8 block of 2-byte words (bfloat16, float16): three rounds of unpacks, 16-,
// 32- and 64-bit.
template <typename T>
void transpose_8x8(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  static_assert(sizeof(T) == 2);
  __m128i r[8], a[8], b[8];
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * src_stride));
  }
  for (int i = 0; i < 8; i += 2) {  // a[i]: elements 0-3 of rows i, i + 1 interleaved; a[i + 1]: 4-7
    a[i] = _mm_unpacklo_epi16(r[i], r[i + 1]);
    a[i + 1] = _mm_unpackhi_epi16(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // b[i + k]: columns 2k, 2k + 1 of rows i .. i + 3
    b[i] = _mm_unpacklo_epi32(a[i], a[i + 2]);
    b[i + 1] = _mm_unpackhi_epi32(a[i], a[i + 2]);
    b[i + 2] = _mm_unpacklo_epi32(a[i + 1], a[i + 3]);
    b[i + 3] = _mm_unpackhi_epi32(a[i + 1], a[i + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // columns 2k and 2k + 1 of all 8 rows
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * k * dst_stride), _mm_unpacklo_epi64(b[k], b[k + 4]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * k + 1) * dst_stride), _mm_unpackhi_epi64(b[k], b[k + 4]));
  }
}

#if defined(__x86_64__)
// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 16: a 16 x 16 block of 4-byte words
// in AVX-512 registers (32- and 64-bit interleaves within 128-bit lanes, then two rounds of lane
// shuffles). Only where the CPU has AVX-512 (detected_isa()). kStream: dst's rows are whole
// aligned cache lines, written with non-temporal stores (no read for ownership, not cached).
template <bool kStream>
__attribute__((target("avx512f"))) inline void store_16(float* to, __m512 v) {
  if constexpr (kStream) {
    _mm512_stream_ps(to, v);
  } else {
    _mm512_storeu_ps(to, v);
  }
}

template <bool kStream = false>
__attribute__((target("avx512f"))) void transpose_16x16(const float* src, int64_t src_stride, float* dst,
                                                         int64_t dst_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) {
    r[i] = _mm512_loadu_ps(src + i * src_stride);
  }
  for (int i = 0; i < 16; i += 2) {  // per lane: rows i, i + 1 interleaved (columns 0-1, then 2-3)
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + k], lane L: rows i .. i + 3 of column 4L + k
    const __m512d a0 = _mm512_castps_pd(t[i]), a1 = _mm512_castps_pd(t[i + 1]);
    const __m512d b0 = _mm512_castps_pd(t[i + 2]), b1 = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
  }
  for (int k = 0; k < 4; ++k) {  // column 4L + k gathers lane L of r[k], r[4 + k], r[8 + k], r[12 + k]
    const __m512 even_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), odd_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
    const __m512 even_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88),
                 odd_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
    store_16<kStream>(dst + k * dst_stride, _mm512_shuffle_f32x4(even_lo, even_hi, 0x88));
    store_16<kStream>(dst + (4 + k) * dst_stride, _mm512_shuffle_f32x4(odd_lo, odd_hi, 0x88));
    store_16<kStream>(dst + (8 + k) * dst_stride, _mm512_shuffle_f32x4(even_lo, even_hi, 0xDD));
    store_16<kStream>(dst + (12 + k) * dst_stride, _mm512_shuffle_f32x4(odd_lo, odd_hi, 0xDD));
  }
}
#endif

// One register-sized square block (4 x 4 of 4-byte words, 8 x 8 of 2-byte ones) transposed.
template <typename T>
constexpr int64_t kSquare = 16 / static_cast<int64_t>(sizeof(T));
template <typename T>
void transpose_square(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  if constexpr (sizeof(T) == 4) {
    transpose_4x4(src, src_stride, dst, dst_stride);
  } else {
    transpose_8x8(src, src_stride, dst, dst_stride);
  }
}

// The square blocks (transpose_square) of channels [0, CB) and pixels [0, WB) of one row, kGroup
// channels at a time along the row (see transpose_row); kToNhwc: src is NCHW (s_w == 1), dst NHWC
// (d_c == 1), else the reverse.
template <int64_t kGroup, bool kToNhwc, typename T>
void transpose_groups(const T* src_row, int64_t s_c, int64_t s_w, T* dst_row, int64_t d_c, int64_t d_w, int64_t CB,
                      int64_t WB) {
  constexpr int64_t kB = kSquare<T>;
  static_assert(kGroup % kB == 0);
  for (int64_t c0 = 0; c0 + kGroup <= CB; c0 += kGroup) {
    for (int64_t w = 0; w < WB; w += kB) {
      for (int64_t c = c0; c < c0 + kGroup; c += kB) {
        if constexpr (kToNhwc) {
          transpose_square(src_row + c * s_c + w, s_c, dst_row + w * d_w + c, d_w);
        } else {
          transpose_square(src_row + w * s_w + c, s_w, dst_row + c * d_c + w, d_c);
        }
      }
    }
  }
}

// dst[w * kC + c] = src[c * s_c + w] for w < W, c < kC: the kC channel rows of a few-channel
// image interleaved, pixels outer, so that the compiler turns the loop into vector permutes
// (the 4 x 4 transposes below need 4 channels; one at a time, 3 channels took ~10 % of AlexNet's
// 11x11/4 stem).
template <int64_t kC, typename T>
void interleave_channels(const T* src, int64_t s_c, T* dst, int64_t W) {
  for (int64_t w = 0; w < W; ++w) {
    for (int64_t c = 0; c < kC; ++c) {
      dst[w * kC + c] = src[c * s_c + w];
    }
  }
}

// One row of 4- or 2-byte words between NCHW and NHWC (s_w == 1 and d_c == 1, or s_c == 1 and
// d_w == 1) as register transposes (4 x 4, 8 x 8), a group of channels at a time along the whole
// row: on rows of 32 pixels or more, one block's channels, so that the NCHW side is read or
// written as sequential runs; on shorter rows, 16 channels, so that each NHWC pixel's cache line is
// completed at once.
// Measured here, a 32 MiB NCHW tensor laid out row by row into a cache-resident buffer, one
// thread: 64 channels x 64 pixels 4.1-4.9 ms (scalar 16 x 16 tiles 6.8-8.4 ms; 16-channel
// groups 4.4-5.3 ms); 512 channels x 8 pixels (4 MiB) 0.35-0.5 ms (scalar tiles 0.6-0.8 ms).
// kStream (4-byte words from NHWC to NCHW only): the AVX-512 blocks' rows are written with
// non-temporal stores, so each must be a whole aligned line (stream_pixels_from_nhwc).
template <typename T, bool kStream = false>
void transpose_row(const T* src_row, int64_t s_c, int64_t s_w, T* dst_row, int64_t d_c, int64_t d_w, int64_t C,
                   int64_t W) {
  const bool to_nhwc = s_w == 1 && d_c == 1;
  if (to_nhwc && C == 3 && d_w == 3) {  // an RGB image (the stems): interleaved 3 to 1, vectorized
    interleave_channels<3>(src_row, s_c, dst_row, W);
    return;
  }
#if defined(__x86_64__)
  if constexpr (sizeof(T) == 4) {
    // With AVX-512, 16 x 16 blocks, 16 channels at a time along the row (each NCHW side's 16 rows
    // filled a line at a time); the edges as below. A 64-channel NHWC row buffer into an NCHW
    // float32 output (the stem: 64 x 64 pixels per row) took a quarter of the layer with 4 x 4 blocks.
    const int64_t C16 = C / 16 * 16, W16 = W / 16 * 16;
    if (detected_isa() == Isa::avx512 && C16 > 0 && W16 > 0) {
      const auto* s = reinterpret_cast<const float*>(src_row);
      auto* d = reinterpret_cast<float*>(dst_row);
      for (int64_t c = 0; c < C16; c += 16) {
        for (int64_t w = 0; w < W16; w += 16) {
          if (to_nhwc) {
            transpose_16x16(s + c * s_c + w, s_c, d + w * d_w + c, d_w);
          } else {
            transpose_16x16<kStream>(s + w * s_w + c, s_w, d + c * d_c + w, d_c);
          }
        }
      }
      if (C16 < C) {  // the last channels, every pixel
        transpose_row(src_row + C16 * s_c, s_c, s_w, dst_row + C16 * d_c, d_c, d_w, C - C16, W);
      }
      if (W16 < W) {  // the last pixels of the first C16 channels
        transpose_row(src_row + W16 * s_w, s_c, s_w, dst_row + W16 * d_w, d_c, d_w, C16, W - W16);
      }
      return;
    }
  }
#endif
  constexpr int64_t kB = kSquare<T>;
  const int64_t CB = C / kB * kB, WB = W / kB * kB;
  // Channels [0, C16) in groups of 16 on short rows, the rest (all on long rows) a block at a time.
  const int64_t C16 = W >= 32 ? 0 : C / 16 * 16;
  const auto groups = to_nhwc ? &transpose_groups<16, true, T> : &transpose_groups<16, false, T>;
  const auto blocks = to_nhwc ? &transpose_groups<kB, true, T> : &transpose_groups<kB, false, T>;
  groups(src_row, s_c, s_w, dst_row, d_c, d_w, C16, WB);
  blocks(src_row + C16 * s_c, s_c, s_w, dst_row + C16 * d_c, d_c, d_w, CB - C16, WB);
  for (int64_t c = 0; c < C; ++c) {  // the edges: columns WB.. of the first CB channels, then the rest
    for (int64_t w = c < CB ? WB : 0; w < W; ++w) {
      dst_row[c * d_c + w * d_w] = src_row[c * s_c + w * s_w];
    }
  }
}
#endif

// One row: dst_row[c * d_c + w * d_w] = src_row[c * s_c + w * s_w] for c < C, w < W, in
// 16 x 16 tiles of (w, c), so that the 16 cache lines read and the 16 written stay in L1
// whichever side has channels innermost (and when both have, each pixel's channels are one
// contiguous copy). Words of 4 or 2 bytes between NCHW and NHWC go through transpose_row on x86-64
// (SSE2 is part of its baseline; elsewhere they take the tiles).
template <typename Src, typename Dst>
void copy_row_tiled(const Src* src_row, int64_t s_c, int64_t s_w, Dst* dst_row, int64_t d_c, int64_t d_w, int64_t C,
                    int64_t W) {
  constexpr int64_t kTile = 16;
  if (s_c == 1 && d_c == 1) {  // channels innermost on both sides: one run per pixel
    if constexpr (std::is_same_v<Src, Dst>) {
      if (s_w == C && d_w == C) {  // and pixels contiguous: one run (memcpy's widest moves)
        std::memcpy(dst_row, src_row, static_cast<size_t>(W * C) * sizeof(Src));
        return;
      }
    }
    for (int64_t w = 0; w < W; ++w) {
      const Src* from = src_row + w * s_w;
      Dst* to = dst_row + w * d_w;
      for (int64_t c = 0; c < C; ++c) {
        to[c] = static_cast<Dst>(from[c]);
      }
    }
    return;
  }
#if defined(__SSE2__)
  if constexpr ((sizeof(Src) == 4 || sizeof(Src) == 2) && std::is_same_v<Src, Dst>) {
    if ((s_w == 1 && d_c == 1) || (s_c == 1 && d_w == 1)) {
      transpose_row(src_row, s_c, s_w, dst_row, d_c, d_w, C, W);
      return;
    }
  }
#endif
  for (int64_t w0 = 0; w0 < W; w0 += kTile) {
    const int64_t w1 = std::min(W, w0 + kTile);
    for (int64_t c0 = 0; c0 < C; c0 += kTile) {
      const int64_t c1 = std::min(C, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t w = w0; w < w1; ++w) {
          dst_row[c * d_c + w * d_w] = static_cast<Dst>(src_row[c * s_c + w * s_w]);
        }
      }
    }
  }
}

// dst[n, c, h, w] = src[n, c, h, w] for n < N, c < C, h < H, w < W, each side
// addressed through its own strides, rows (n, h) split over torch's threads.
// Without a change of dtype, values are moved as opaque words of their size
// (Src = Dst), so one instantiation per element size serves every dtype; a
// change of dtype (bfloat16 or float16 to float32) converts each value.
template <typename Src, typename Dst>
void copy_tiled(const Src* src, const Strides4& s, Dst* dst, const Strides4& d, int64_t N, int64_t C, int64_t H,
                int64_t W) {
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      copy_row_tiled(src + n * s.n + h * s.h, s.c, s.w, dst + n * d.n + h * d.h, d.c, d.w, C, W);
    }
  });
}

// Copies the (n, c, h, w) box of sizes `sizes` between two tensors' storage,
// converting bfloat16 or float16 to float32 when dst is float32.
void copy_box(const at::Tensor& src, const Strides4& s, at::Tensor& dst, const Strides4& d, at::IntArrayRef sizes) {
  const void* from = src.const_data_ptr();
  void* to = dst.mutable_data_ptr();
  if (src.scalar_type() != dst.scalar_type()) {
    TORCH_CHECK(dst.scalar_type() == at::kFloat && (src.scalar_type() == at::kBFloat16 || src.scalar_type() == at::kHalf),
                "layout conversion: cannot convert ", src.scalar_type(), " to ", dst.scalar_type());
    if (src.scalar_type() == at::kBFloat16) {
      return copy_tiled(static_cast<const c10::BFloat16*>(from), s, static_cast<float*>(to), d, sizes[0], sizes[1],
                        sizes[2], sizes[3]);
    }
    return copy_tiled(static_cast<const c10::Half*>(from), s, static_cast<float*>(to), d, sizes[0], sizes[1],
                      sizes[2], sizes[3]);
  }
  switch (src.element_size()) {
    case 2:
      return copy_tiled(static_cast<const uint16_t*>(from), s, static_cast<uint16_t*>(to), d, sizes[0], sizes[1],
                        sizes[2], sizes[3]);
    case 4:
      return copy_tiled(static_cast<const uint32_t*>(from), s, static_cast<uint32_t*>(to), d, sizes[0], sizes[1],
                        sizes[2], sizes[3]);
    case 8:
      return copy_tiled(static_cast<const uint64_t*>(from), s, static_cast<uint64_t*>(to), d, sizes[0], sizes[1],
                        sizes[2], sizes[3]);
    default:
      TORCH_CHECK(false, "layout conversion: unsupported element size ", src.element_size());
  }
}

} // namespace

template <typename T>
void copy_pixels_to_nhwc(const T* src, int64_t channel_stride, int64_t pixel_stride, int64_t channels,
                         int64_t pixels, T* dst) {
  copy_row_tiled(src, channel_stride, pixel_stride, dst, int64_t{1}, channels, channels, pixels);
}
template void copy_pixels_to_nhwc(const float*, int64_t, int64_t, int64_t, int64_t, float*);
template void copy_pixels_to_nhwc(const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*);

void copy_pixels_from_nhwc(const float* src, int64_t src_pixel_stride, int64_t channels, int64_t pixels, float* dst,
                           int64_t dst_channel_stride, int64_t dst_pixel_stride) {
  copy_row_tiled(src, int64_t{1}, src_pixel_stride, dst, dst_channel_stride, dst_pixel_stride, channels, pixels);
}

void copy_pixels_from_nhwc(const float* src, int64_t src_pixel_stride, int64_t channels, int64_t pixels,
                           c10::BFloat16* dst, int64_t dst_channel_stride, int64_t dst_pixel_stride) {
  copy_row_tiled(src, int64_t{1}, src_pixel_stride, dst, dst_channel_stride, dst_pixel_stride, channels, pixels);
}

void stream_pixels_from_nhwc(const float* src, int64_t src_pixel_stride, int64_t channels, int64_t pixels,
                             float* dst, int64_t dst_channel_stride) {
#if defined(__x86_64__)
  constexpr int64_t kLine = 16;  // floats per 64-byte cache line
  // Pixels [lead, lead + 16k) of every channel row are whole aligned lines when the channel
  // rows are lines apart.
  const auto misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) / sizeof(float) % kLine);
  const int64_t lead = std::min(pixels, (kLine - misaligned) % kLine);
  const int64_t C16 = channels / 16 * 16, W16 = (pixels - lead) / 16 * 16;
  if (detected_isa() == Isa::avx512 && dst_channel_stride % kLine == 0 && C16 > 0 && W16 > 0) {
    copy_pixels_from_nhwc(src, src_pixel_stride, channels, lead, dst, dst_channel_stride, 1);
    // From `lead` on, transpose_row's 16 x 16 blocks start on lines; its edges (fewer than 16
    // channels or pixels) take the SSE2 blocks and plain stores.
    transpose_row<float, true>(src + lead * src_pixel_stride, 1, src_pixel_stride, dst + lead, dst_channel_stride, 1,
                               channels, pixels - lead);
    _mm_sfence();  // the streamed lines ordered before whatever this thread stores next
    return;
  }
#endif
  copy_pixels_from_nhwc(src, src_pixel_stride, channels, pixels, dst, dst_channel_stride, 1);
}

namespace {

const at::Tensor& checked_float32_4d(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "NhwcRows: expected a 4-D float32 tensor");
  return x;
}

} // namespace

NhwcRows::NhwcRows(const at::Tensor& x)
    : x_(checked_float32_4d(x).const_data_ptr<float>()), s_(strides_of(x)), channels_(x.size(1)),
      height_(x.size(2)), width_(x.size(3)), row_size_(x.size(1) * x.size(3)), in_place_(nhwc_rows_in_place(s_, channels_)) {}

void NhwcRows::load(int64_t first, int64_t count) {
  first_ = first;
  if (in_place_ || count <= 0) {
    return;
  }
  buffer_.resize(std::max<size_t>(buffer_.size(), static_cast<size_t>(count * row_size_)));
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = (first + i) / height_, h = (first + i) % height_;
      copy_pixels_to_nhwc(x_ + n * s_.n + h * s_.h, s_.c, s_.w, channels_, width_, buffer_.data() + i * row_size_);
    }
  });
}

at::Tensor nhwc_pixels(const at::Tensor& x, int64_t step_h, int64_t step_w, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(x.dim() == 4 && step_h >= 1 && step_w >= 1, "nhwc_pixels: expected a 4-D tensor and steps >= 1");
  const at::ScalarType out_dtype = dtype.value_or(x.scalar_type());
  if (step_h == 1 && step_w == 1 && out_dtype == x.scalar_type() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return x.permute({0, 2, 3, 1});
  }
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t H = (x.size(2) + step_h - 1) / step_h, W = (x.size(3) + step_w - 1) / step_w;
  at::Tensor out = at::empty({N, H, W, C}, x.options().dtype(out_dtype).memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() > 0) {
    const Strides4 s = {x.stride(0), x.stride(1), x.stride(2) * step_h, x.stride(3) * step_w};
    const Strides4 d = {H * W * C, 1, W * C, C};
    copy_box(x, s, out, d, {N, C, H, W});
  }
  return out;
}

at::Tensor nchw_from_nhwc(const at::Tensor& y, at::MemoryFormat format) {
  TORCH_CHECK(y.dim() == 4 && y.is_contiguous(), "nchw_from_nhwc: expected a contiguous NHWC tensor");
  const at::Tensor view = y.permute({0, 3, 1, 2});
  if (format == at::MemoryFormat::ChannelsLast) {
    return view;
  }
  TORCH_CHECK(format == at::MemoryFormat::Contiguous, "nchw_from_nhwc: unsupported memory format");
  const int64_t N = y.size(0), H = y.size(1), W = y.size(2), C = y.size(3);
  at::Tensor out = at::empty({N, C, H, W}, y.options());
  if (out.numel() > 0) {
    copy_box(y, {H * W * C, 1, W * C, C}, out, {C * H * W, H * W, W, 1}, {N, C, H, W});
  }
  return out;
}

} // namespace miniplaces_ext::cpu
