// The weight gradient of a bfloat16 one-group convolution on tiles (tile_block.h): pixels are
// the reduction.
//
//   dW[co][ci][i][j] = sum over n, oh, ow of dy[n][co][oh][ow] * x[n][ci][s*oh - ph + i*dh][s*ow - pw + j*dw]
//
// Each image's zero-padded input is split into its s x s stride phases (rows and columns
// u, v mod s) and laid out as channel planes [phase][Cin][hq * wq], and its output gradient as
// pairs of virtual pixels q = oh * wq + ow ([Cout / 32][pairs][32][2], zero where ow >= Wo: the flat runs
// of direct_conv_kernel.h seen from the other side). Tap (i, j) reads phase ((i*dh) % s,
// (j*dw) % s) at virtual pixel q + ((i*dh) / s) * wq + (j*dw) / s: for a block of 32 input
// channels (A: plane rows, pixels contiguous) and 32 output channels (B: the pairs) every 16
// pairs of pixels are one tile product, with no im2col. A task is one (input-channel block,
// output-channel block) pair: it takes the images a chunk at a time (about kChunkBytes of both
// operands, which stay in L2) and runs every tap over the chunk before the next one, so each
// operand block is read from memory once rather than once per tap (a task per tap read ResNet-18
// layer3's 1.2 MB of operands 9 times: 17.3 ms there, oneDNN 5.4). Each tap's tile sums over a
// chunk are added to its float32 sums in chunk order, so the bits do not depend on the thread
// count; the caller rounds dW to bfloat16 once.
//
// Include after tile_block.h and register_block.h, inside the tile unit's target pragma; on x86-64
// after <emmintrin.h> (SSE2, included before the pragma).
#pragma once

#include "../../conv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace miniplaces_ext::cpu {

template <typename Tiles>
struct TileWeightGrad {
  static constexpr int64_t kBlock = 32;  // channels per side of a 2 x 2 block of accumulator tiles

  struct Args {
    const uint16_t* x;      // [N][s][s][Cin][plane]: the phases of the zero-padded images, then zeros
    int64_t plane;          // elements per channel plane
    const uint16_t* dy;     // [N][Cout / 32][pairs][32][2], Cout padded to whole blocks of 32
    int64_t pairs, cout_blocks;
    int64_t wq;             // row width of a phase plane (and of the virtual pixels)
    const ConvGeometry& g;
    float* dw;              // [Cout][Cin][kh][kw], written
  };

  // Operand bytes of the images one task takes at a time (both operands of a block, all phases).
  static constexpr int64_t kChunkBytes = int64_t{512} << 10;

  // The R x 32 block of input channels [ci0, ci0 + R) and output channels [co0, co0 + 32) of every
  // tap, over images [n0, n1): its tile sums added to sums[tap][R][32] (`first`: stored instead).
  template <int R>
  static void block(const Args& a, int64_t ci0, int64_t co0, int64_t n0, int64_t n1, bool first, float* sums) {
    const ConvGeometry& g = a.g;
    const int64_t phases = g.stride_h * g.stride_w;
    float part[R * kBlock];
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        TileBlock<Tiles, R> acc;
        const int64_t row = i * g.dilation_h, column = j * g.dilation_w;  // of the tap, in the padded image
        const int64_t phase = (row % g.stride_h) * g.stride_w + column % g.stride_w;
        const int64_t offset = (row / g.stride_h) * a.wq + column / g.stride_w;
        for (int64_t n = n0; n < n1; ++n) {
          const uint16_t* rows = a.x + ((n * phases + phase) * g.in_channels + ci0) * a.plane + offset;
          const uint16_t* b = a.dy + (n * a.cout_blocks + co0 / kBlock) * a.pairs * kBlock * 2;
          acc.template accumulate<void>(StridedRows<uint16_t>{rows, a.plane}, b, 2 * kBlock, a.pairs);
        }
        float* tap_sums = sums + (i * g.kernel_w + j) * R * kBlock;
        acc.store(first ? tap_sums : part, kBlock, 1, nullptr, static_cast<int>(kBlock));
        if (!first) {
          for (int64_t e = 0; e < R * kBlock; ++e) {
            tap_sums[e] += part[e];
          }
        }
      }
    }
  }

  // Writes a task's sums[tap][R][32] to dW [Cout][Cin][kh][kw] (output channels past Cout dropped).
  static void write_block(const Args& a, int64_t ci0, int64_t rows, int64_t co0, const float* sums) {
    const ConvGeometry& g = a.g;
    const int64_t taps = g.kernel_h * g.kernel_w;
    const int64_t columns = std::min<int64_t>(kBlock, g.out_channels - co0);
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < columns; ++c) {
          a.dw[((co0 + c) * g.in_channels + ci0 + r) * taps + tap] = sums[(tap * rows + r) * kBlock + c];
        }
      }
    }
  }

  using BlockKernel = void (*)(const Args&, int64_t, int64_t, int64_t, int64_t, bool, float*);
  template <size_t... R>
  static constexpr std::array<BlockKernel, kBlock + 1> table(std::index_sequence<R...>) {
    return {nullptr, &block<static_cast<int>(R) + 1>...};
  }

  // `count` pixels of `channels` channels (pixel k's channel c at src[k * pixel_stride + c *
  // channel_stride]) written channel-major: channel c's pixels to dst + c * plane, consecutive.
  // Consecutive pixels of a channel (NCHW, stride 1) are one copy per channel, every other one
  // (NCHW, stride 2) a loop of constant stride the compiler vectorizes; pixels with their channels
  // innermost go 8 x 8 at a time through SSE2 registers (x86-64's baseline); the rest an element
  // at a time.
  static void transpose_pixels(const uint16_t* src, int64_t pixel_stride, int64_t channel_stride, int64_t count,
                               int64_t channels, uint16_t* dst, int64_t plane) {
    if (pixel_stride == 1) {
      for (int64_t c = 0; c < channels; ++c) {
        std::memcpy(dst + c * plane, src + c * channel_stride, static_cast<size_t>(count) * sizeof(uint16_t));
      }
      return;
    }
    if (pixel_stride == 2 && channel_stride != 1) {
      for (int64_t c = 0; c < channels; ++c) {
        const uint16_t* from = src + c * channel_stride;
        uint16_t* to = dst + c * plane;
        for (int64_t k = 0; k < count; ++k) {
          to[k] = from[2 * k];
        }
      }
      return;
    }
    int64_t k0 = 0, c8 = 0;
#if defined(__SSE2__)
    if (channel_stride == 1) {
      c8 = channels / 8 * 8;
      for (; k0 + 8 <= count; k0 += 8) {
        for (int64_t c = 0; c < c8; c += 8) {
          transpose_8x8(src + k0 * pixel_stride + c, pixel_stride, dst + c * plane + k0, plane);
        }
      }
    }
#endif
    for (int64_t c = 0; c < channels; ++c) {  // what the blocks left: pixels from k0 on, channels from c8 on
      for (int64_t k = c < c8 ? k0 : 0; k < count; ++k) {
        dst[c * plane + k] = src[k * pixel_stride + c * channel_stride];
      }
    }
  }

#if defined(__SSE2__)
  // dst[c * dst_stride + k] = src[k * src_stride + c] for k, c < 8: three rounds of interleaves.
  static void transpose_8x8(const uint16_t* src, int64_t src_stride, uint16_t* dst, int64_t dst_stride) {
    __m128i r[8], t[8];
    for (int k = 0; k < 8; ++k) {
      r[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k * src_stride));
    }
    for (int k = 0; k < 4; ++k) {  // pixel pairs: (2k, 2k+1) interleaved, channels 0-3 and 4-7
      t[k] = _mm_unpacklo_epi16(r[2 * k], r[2 * k + 1]);
      t[k + 4] = _mm_unpackhi_epi16(r[2 * k], r[2 * k + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // quads of pixels: channels 4h .. 4h + 3, two per register
      r[4 * h] = _mm_unpacklo_epi32(t[4 * h], t[4 * h + 1]);
      r[4 * h + 1] = _mm_unpackhi_epi32(t[4 * h], t[4 * h + 1]);
      r[4 * h + 2] = _mm_unpacklo_epi32(t[4 * h + 2], t[4 * h + 3]);
      r[4 * h + 3] = _mm_unpackhi_epi32(t[4 * h + 2], t[4 * h + 3]);
    }
    for (int h = 0; h < 2; ++h) {  // all 8 pixels of channels 4h + j
      for (int j = 0; j < 2; ++j) {
        const __m128i lo = r[4 * h + j], hi = r[4 * h + 2 + j];
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (4 * h + 2 * j) * dst_stride), _mm_unpacklo_epi64(lo, hi));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (4 * h + 2 * j + 1) * dst_stride), _mm_unpackhi_epi64(lo, hi));
      }
    }
  }
#endif

  // One pair of grad_output pixels (their channels contiguous) as B reads it, in blocks of 32
  // channels `block_stride` apart: to[(c / 32) * block_stride + 2 * (c % 32) + k] = pixel k's
  // channel c (c < channels), zero for a missing pixel (null) and for c up to `padded`.
  static void interleave_pair(const uint16_t* first, const uint16_t* second, int64_t channels, int64_t padded,
                              int64_t block_stride, uint16_t* to) {
    for (int64_t c0 = 0; c0 < padded; c0 += kBlock, to += block_stride) {
      const int64_t count = std::clamp<int64_t>(channels - c0, 0, kBlock);
      const uint16_t* a = first != nullptr ? first + c0 : nullptr;
      const uint16_t* b = second != nullptr ? second + c0 : nullptr;
      int64_t c = 0;
#if defined(__SSE2__)
      if (a != nullptr && b != nullptr) {
        for (; c + 8 <= count; c += 8) {  // 8 channels of both pixels: two interleaves
          const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + c));
          const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + c));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 2 * c), _mm_unpacklo_epi16(lo, hi));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 2 * c + 8), _mm_unpackhi_epi16(lo, hi));
        }
      }
#endif
      for (; c < count; ++c) {
        to[2 * c] = a != nullptr ? a[c] : uint16_t{0};
        to[2 * c + 1] = b != nullptr ? b[c] : uint16_t{0};
      }
      std::memset(to + 2 * count, 0, static_cast<size_t>(kBlock - count) * 2 * sizeof(uint16_t));
    }
  }

  // How the images lie in the phase planes of a geometry: the padded image is [hq * sh][wq * sw]
  // (every input pixel and every pixel a tap reads); each phase plane holds hq x wq pixels and
  // the zeros the last tap reads past them.
  struct Planes {
    int64_t wq, pairs, plane;

    explicit Planes(const ConvGeometry& g) {
      const int64_t sh = g.stride_h, sw = g.stride_w;
      const int64_t hq =
          (std::max(g.pad_h + g.in_h, sh * (g.out_h - 1) + (g.kernel_h - 1) * g.dilation_h + 1) + sh - 1) / sh;
      wq = (std::max(g.pad_w + g.in_w, sw * (g.out_w - 1) + (g.kernel_w - 1) * g.dilation_w + 1) + sw - 1) / sw;
      // Whole tile products of 16 pairs: zero pairs at the end instead of a staged partial product.
      pairs = ((g.out_h - 1) * wq + g.out_w + 31) / 32 * 16;
      const int64_t last_offset = (g.kernel_h - 1) * g.dilation_h / sh * wq + (g.kernel_w - 1) * g.dilation_w / sw;
      plane = std::max(hq * wq, last_offset + 2 * pairs);
    }
  };

  static void check_operands(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
    TORCH_CHECK(g.groups == 1, "tile weight gradient: one group");
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && dy.scalar_type() == at::kBFloat16,
                "tile weight gradient: expected bfloat16 operands, got ", x.scalar_type(), " and ", dy.scalar_type());
  }

  // dW, float32 [Cout, Cin, kh, kw], of a one-group convolution from its bfloat16 input
  // x [N, Cin, H, W] and grad_output dy [N, Cout, Ho, Wo] (any strides).
  static at::Tensor run(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
    check_operands(x, dy, g);
    const int64_t sh = g.stride_h, sw = g.stride_w, top = g.pad_h, left = g.pad_w;
    const Planes shape(g);
    const int64_t wq = shape.wq, plane = shape.plane;
    at::Tensor planes = at::zeros({g.batch, sh * sw, g.in_channels, plane}, x.options());
    const uint16_t* xs = static_cast<const uint16_t*>(x.const_data_ptr());
    uint16_t* xp = static_cast<uint16_t*>(planes.mutable_data_ptr());
    const Strides4 xst = strides_of(x);
    // The phases some tap reads (a 1x1/2 layer reads one of its four): the others stay zero.
    std::vector<char> read(sh * sw, 0);
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        read[((i * g.dilation_h) % sh) * sw + (j * g.dilation_w) % sw] = 1;
      }
    }
    // Each input row's pixels of one column phase land at consecutive positions of its phase
    // planes: one transposed block copy per (row, phase).
    at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / g.in_h, ih = t % g.in_h, row = ih + top;
        for (int64_t v = 0; v < sw; ++v) {
          const int64_t iw0 = ((v - left) % sw + sw) % sw;  // the first input column of phase v
          if (!read[(row % sh) * sw + v] || iw0 >= g.in_w) {
            continue;
          }
          transpose_pixels(xs + n * xst.n + ih * xst.h + iw0 * xst.w, sw * xst.w, xst.c, (g.in_w - 1 - iw0) / sw + 1,
                           g.in_channels,
                           xp + ((n * sh + row % sh) * sw + v) * g.in_channels * plane + (row / sh) * wq + (iw0 + left) / sw,
                           plane);
        }
      }
    });
    return multiply(planes, dy, g, shape);
  }

  // The geometry a few-channel layer's weight gradient is computed as (run_lowered): input
  // channel c * kw + j is the input's channel c seen through column tap j, one column per output
  // column, so the kernel is kh x 1 with stride (sh, 1) over kw * Cin channels.
  static ConvGeometry lowered_geometry(const ConvGeometry& g) {
    ConvGeometry l = g;
    l.in_channels = g.in_channels * g.kernel_w;
    l.in_w = g.out_w;
    l.kernel_w = 1;
    l.stride_w = 1;
    l.pad_w = 0;
    l.dilation_w = 1;
    return l;
  }

  // dW as run() gives it, for a layer of few input channels (the stem's 3), whose planes would
  // fill a sliver of each A tile (3 of 32 rows, 49 taps): the column taps are folded into the
  // input channels (lowered_geometry: 21 rows, 7 taps), and the planes of that geometry are
  // written from x directly: per input row and channel, its pixels split by column phase, then
  // each column tap's run of them copied whole.
  static at::Tensor run_lowered(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
    check_operands(x, dy, g);
    const ConvGeometry l = lowered_geometry(g);
    const int64_t sh = g.stride_h, sw = g.stride_w, kw = g.kernel_w;
    const Planes shape(l);
    const int64_t wq = shape.wq, plane = shape.plane;
    const int64_t phase_columns = (g.in_w + sw - 1) / sw;  // the most input columns of one phase v
    at::Tensor planes = at::zeros({g.batch, sh, l.in_channels, plane}, x.options());
    const uint16_t* xs = static_cast<const uint16_t*>(x.const_data_ptr());
    uint16_t* xp = static_cast<uint16_t*>(planes.mutable_data_ptr());
    const Strides4 xst = strides_of(x);
    at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint16_t> split(sw * phase_columns);  // [v][k]: input column k * sw + v
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / g.in_h, ih = t % g.in_h, row = ih + g.pad_h;
        for (int64_t c = 0; c < g.in_channels; ++c) {
          const uint16_t* src = xs + n * xst.n + c * xst.c + ih * xst.h;
          for (int64_t v = 0; v < sw; ++v) {
            for (int64_t k = 0, iw = v; iw < g.in_w; ++k, iw += sw) {
              split[v * phase_columns + k] = src[iw * xst.w];
            }
          }
          for (int64_t j = 0; j < kw; ++j) {
            // Output column b reads input column sw * b + t0 = sw * (b + k0) + v.
            const int64_t t0 = j * g.dilation_w - g.pad_w;
            const int64_t v = (t0 % sw + sw) % sw, k0 = (t0 - v) / sw;
            const int64_t count = (g.in_w - v + sw - 1) / sw;  // input columns of phase v
            const int64_t b0 = std::max<int64_t>(0, -k0), b1 = std::min(g.out_w, count - k0);
            if (b1 > b0) {
              uint16_t* dst = xp + ((n * sh + row % sh) * l.in_channels + c * kw + j) * plane + (row / sh) * wq;
              std::memcpy(dst + b0, split.data() + v * phase_columns + b0 + k0,
                          static_cast<size_t>(b1 - b0) * sizeof(uint16_t));
            }
          }
        }
      }
    });
    // [Cout][Cin * kw][kh][1] -> [Cout][Cin][kh][kw]
    return multiply(planes, dy, l, shape)
        .view({g.out_channels, g.in_channels, kw, g.kernel_h})
        .permute({0, 1, 3, 2})
        .contiguous();
  }

  // dW, float32 [Cout, Cin, kh, kw], of geometry g from the phase planes of its input
  // ([N][sh * sw][Cin][shape.plane]) and its grad_output dy [N, Cout, Ho, Wo] (any strides).
  static at::Tensor multiply(const at::Tensor& planes, const at::Tensor& dy, const ConvGeometry& g,
                             const Planes& shape) {
    const int64_t sh = g.stride_h, sw = g.stride_w;
    const int64_t wq = shape.wq, pairs = shape.pairs, plane = shape.plane;
    const int64_t cout_padded = (g.out_channels + kBlock - 1) / kBlock * kBlock;
    const int64_t cout_blocks = cout_padded / kBlock;
    // Blocked by 32 channels, so that a B tile's rows (pairs) lie 128 bytes apart in one run.
    at::Tensor dy_pairs = at::empty({g.batch, cout_blocks, pairs, kBlock, 2}, dy.options());
    const uint16_t* dys = static_cast<const uint16_t*>(dy.const_data_ptr());
    uint16_t* dyp = static_cast<uint16_t*>(dy_pairs.mutable_data_ptr());
    const Strides4 dst = strides_of(dy);
    // Every pair written whole (zeros past each row and past Cout), so dy_pairs needs no zeroing.
    // An image whose channels are not innermost is first laid out NHWC in cache, row by row
    // (copy_pixels_to_nhwc), so that each pair is read as two runs of channels.
    const bool nhwc = dst.c == 1;
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint16_t> image(nhwc ? 0 : g.out_h * g.out_w * g.out_channels);
      for (int64_t n = begin; n < end; ++n) {
        const uint16_t* pixels = dys + n * dst.n;
        Strides4 layout = dst;
        if (!nhwc) {
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            copy_pixels_to_nhwc(pixels + oh * dst.h, dst.c, dst.w, g.out_channels, g.out_w,
                                image.data() + oh * g.out_w * g.out_channels);
          }
          pixels = image.data();
          layout = Strides4{0, 1, g.out_w * g.out_channels, g.out_channels};
        }
        for (int64_t pair = 0; pair < pairs; ++pair) {
          const uint16_t* from[2];
          for (int64_t k = 0; k < 2; ++k) {
            const int64_t q = 2 * pair + k, oh = q / wq, ow = q % wq;
            from[k] = oh < g.out_h && ow < g.out_w ? pixels + oh * layout.h + ow * layout.w : nullptr;
          }
          interleave_pair(from[0], from[1], g.out_channels, cout_padded, pairs * kBlock * 2,
                          dyp + (n * cout_blocks * pairs + pair) * kBlock * 2);
        }
      }
    });
    at::Tensor dw = at::empty({g.out_channels, g.in_channels, g.kernel_h, g.kernel_w}, dy.options().dtype(at::kFloat));
    const Args a{static_cast<const uint16_t*>(planes.const_data_ptr()), plane,
                 static_cast<const uint16_t*>(dy_pairs.const_data_ptr()), pairs, cout_blocks, wq, g,
                 dw.mutable_data_ptr<float>()};
    static constexpr auto kTable = table(std::make_index_sequence<kBlock>{});
    const int64_t ci_blocks = (g.in_channels + kBlock - 1) / kBlock;
    const int64_t taps = g.kernel_h * g.kernel_w;
    const int64_t image_bytes = (kBlock * sh * sw * plane + pairs * kBlock * 2) * int64_t{2};
    const int64_t chunk = std::clamp<int64_t>(kChunkBytes / image_bytes, 1, std::max<int64_t>(g.batch, 1));
    at::parallel_for(0, ci_blocks * cout_blocks, 1, [&](int64_t begin, int64_t end) {
      const TileRun<Tiles> run;
      std::vector<float> sums(taps * kBlock * kBlock);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t ci0 = t / cout_blocks * kBlock, co0 = t % cout_blocks * kBlock;
        const int64_t rows = std::min(kBlock, g.in_channels - ci0);
        for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
          kTable[rows](a, ci0, co0, n0, std::min(g.batch, n0 + chunk), n0 == 0, sums.data());
        }
        write_block(a, ci0, rows, co0, sums.data());
      }
    });
    return dw;
  }
};

} // namespace miniplaces_ext::cpu
