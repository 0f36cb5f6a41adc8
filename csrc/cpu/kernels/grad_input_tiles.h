// grad_input of a bfloat16 few-channel layer (the stem's 3 channels: lowered_conv.cpp) on tiles
// (tile_block.h), as the adjoint of its lowered forward pass:
//
//   dcol[p][(i, j, c)] = sum over co of dy[p][co] * W[co][c][i][j]      (tile products)
//   dx[n][ih][iw][c]  += dcol[p][(i, j, c)]  where (ih, iw) is tap (i, j) of output pixel p
//
// As stride-phase convolutions (ops/grad_input.cpp) these layers write 3 of each tile product's
// 32 columns; here every column holds a value of a receptive field (kh * kw * Cin: the stem's
// 147 in 5 blocks of 32), and the reduction is over the output channels. Each thread takes whole
// images: per output row, dcol is computed into a row buffer in cache, then added into the
// image's float32 dx, a kernel row's kw * Cin values at a time (one contiguous run of the NHWC
// image when columns are undilated); at the end of the image dx is rounded once to bfloat16 and
// written through the output's strides. Rows and pixels are taken in one fixed order, so the
// bits do not depend on the thread count.
//
// Include after tile_block.h and register_block.h, inside the tile unit's target pragma.
#pragma once

#include "../../conv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace miniplaces_ext::cpu {

template <typename Tiles>
struct TileGradInputLowered {
  static constexpr int64_t kColumns = 32;  // dcol columns per block of accumulator tiles
  static constexpr int64_t kPixels = 32;   // output pixels per block

  struct Args {
    const uint16_t* dy;     // [N, Cout, Ho, Wo] through dy_strides, Cout even
    Strides4 dy_strides;
    const uint16_t* w;      // [Cout / 2][columns][2]: W[co][c][i][j] at column (i * kw + j) * Cin + c
    int64_t columns;        // the receptive field's kh * kw * Cin values, padded to whole blocks of 32
    const ConvGeometry& g;
  };

  // dcol of output pixels [ow0, ow0 + R) of row `row` (dy's pixels, Cout apart) into
  // buffer[R][columns].
  template <int R>
  static void pixels(const Args& a, const uint16_t* row, int64_t ow0, float* buffer) {
    const int64_t cout = a.g.out_channels;
    for (int64_t col0 = 0; col0 < a.columns; col0 += kColumns) {
      TileBlock<Tiles, R> acc;
      acc.template accumulate<void>(StridedRows<uint16_t>{row + ow0 * cout, cout}, a.w + col0 * 2, 2 * a.columns,
                                    cout / 2);
      acc.store(buffer + col0, a.columns, 1, nullptr, static_cast<int>(kColumns));
    }
  }

  using PixelKernel = void (*)(const Args&, const uint16_t*, int64_t, float*);
  template <size_t... R>
  static constexpr std::array<PixelKernel, kPixels + 1> table(std::index_sequence<R...>) {
    return {nullptr, &pixels<static_cast<int>(R) + 1>...};
  }

  // dx [N, Cin, H, W] (bfloat16, any strides) from dy (bfloat16 [N, Cout, Ho, Wo], any strides,
  // Cout even) and the weight packed as Args::w says. A row of dy whose channels are not
  // innermost is laid out NHWC in cache as it is reached.
  static void run(const at::Tensor& dy, const at::Tensor& packed, const ConvGeometry& g, const at::Tensor& dx) {
    TORCH_CHECK(g.groups == 1 && g.out_channels % 2 == 0 && g.dilation_w == 1,
                "lowered tile grad_input: expected one group, an even number of output channels and undilated columns");
    TORCH_CHECK(dy.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16 &&
                    dx.scalar_type() == at::kBFloat16 && packed.is_contiguous(),
                "lowered tile grad_input: expected bfloat16 grad_output, a contiguous bfloat16 weight and a bfloat16 dx");
    const int64_t run_values = g.kernel_w * g.in_channels;  // one kernel row of a receptive field
    const Args a{static_cast<const uint16_t*>(dy.const_data_ptr()), strides_of(dy),
                 static_cast<const uint16_t*>(packed.const_data_ptr()), packed.size(1), g};
    const bool rows_in_place = nhwc_rows_in_place(a.dy_strides, g.out_channels);
    TORCH_CHECK(a.columns % kColumns == 0 && a.columns >= g.kernel_h * run_values,
                "lowered tile grad_input: the packed weight has ", a.columns, " columns");
    static constexpr auto kTable = table(std::make_index_sequence<kPixels>{});
    const Strides4 s = strides_of(dx);
    auto* out = static_cast<c10::BFloat16*>(dx.mutable_data_ptr());
    const int64_t image_values = g.in_h * g.in_w * g.in_channels;
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      const TileRun<Tiles> run;
      std::vector<float> buffer(kPixels * a.columns), image(image_values);
      std::vector<uint16_t> laid_out(rows_in_place ? 0 : g.out_w * g.out_channels);
      for (int64_t n = begin; n < end; ++n) {
        std::fill(image.begin(), image.end(), 0.0f);
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const uint16_t* row = a.dy + n * a.dy_strides.n + oh * a.dy_strides.h;
          if (!rows_in_place) {
            copy_pixels_to_nhwc(row, a.dy_strides.c, a.dy_strides.w, g.out_channels, g.out_w, laid_out.data());
            row = laid_out.data();
          }
          for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += kPixels) {
            const int64_t count = std::min(kPixels, g.out_w - ow0);
            kTable[count](a, row, ow0, buffer.data());
            for (int64_t p = 0; p < count; ++p) {
              add_receptive_field(buffer.data() + p * a.columns, oh, ow0 + p, g, image.data());
            }
          }
        }
        for (int64_t ih = 0; ih < g.in_h; ++ih) {  // rounded once, written through dx's strides
          copy_pixels_from_nhwc(image.data() + ih * g.in_w * g.in_channels, g.in_channels, g.in_channels, g.in_w,
                                out + n * s.n + ih * s.h, s.c, s.w);
        }
      }
    });
  }

  // image[ih][iw][c] += field[(i * kw + j) * Cin + c] for the taps (i, j) of output pixel
  // (oh, ow) inside the image: per kernel row, one contiguous run of (j, c).
  static void add_receptive_field(const float* field, int64_t oh, int64_t ow, const ConvGeometry& g, float* image) {
    const int64_t cin = g.in_channels;
    const int64_t iw0 = ow * g.stride_w - g.pad_w;
    const int64_t j0 = std::max<int64_t>(0, -iw0), j1 = std::min(g.kernel_w, g.in_w - iw0);
    if (j1 <= j0) {
      return;
    }
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        continue;
      }
      float* to = image + (ih * g.in_w + iw0 + j0) * cin;
      const float* from = field + (i * g.kernel_w + j0) * cin;
      for (int64_t e = 0; e < (j1 - j0) * cin; ++e) {
        to[e] += from[e];
      }
    }
  }
};

} // namespace miniplaces_ext::cpu
