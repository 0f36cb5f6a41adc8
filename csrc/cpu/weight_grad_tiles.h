// The weight gradient of a bfloat16 stride-1 one-group convolution on tiles (tile_block.h):
// pixels are the reduction.
//
//   dW[co][ci][i][j] = sum over n, oh, ow of dy[n][co][oh][ow] * x[n][ci][oh - ph + i*dh][ow - pw + j*dw]
//
// Each image's input is laid out as zero-padded channel planes [Cin][hp * wp] and its output
// gradient as pairs of virtual pixels q = oh * wp + ow ([pairs][Cout][2], zero where ow >= Wo,
// the flat runs of direct_conv_kernel.h seen from the other side): then tap (i, j) of channel ci
// at virtual pixel q is plane element q + i*dh*wp + j*dw, so for a block of 32 input channels
// (A: plane rows, the pixels contiguous) and 32 output channels (B: the pairs) every 16 pairs of
// pixels are one tile product, with no im2col. A task is one (tap, input-channel block,
// output-channel block): its float32 tile sums run over every pixel of every image in a fixed
// order and are stored once, so the bits do not depend on the thread count; the caller rounds
// dW to bfloat16 once.
//
// Include after tile_block.h and register_block.h, inside the tile unit's target pragma.
#pragma once

#include "../conv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

namespace miniplaces_ext::cpu {

template <typename Tiles>
struct TileWeightGrad {
  static constexpr int64_t kBlock = 32;  // channels per side of a 2 x 2 block of accumulator tiles

  struct Args {
    const uint16_t* x;      // [N][Cin][plane]: zero-padded hp x wp images, then zeros
    int64_t plane;          // elements per channel plane
    const uint16_t* dy;     // [N][pairs][cout_padded][2]
    int64_t pairs, cout_padded;
    int64_t wp;             // padded row width
    const ConvGeometry& g;
    float* dw;              // [Cout][Cin][kh][kw], written
  };

  // The R x 32 block of input channels [ci0, ci0 + R) and output channels [co0, co0 + 32) of tap (i, j).
  template <int R>
  static void block(const Args& a, int64_t i, int64_t j, int64_t ci0, int64_t co0) {
    const ConvGeometry& g = a.g;
    TileBlock<Tiles, R> acc;
    const int64_t offset = i * g.dilation_h * a.wp + j * g.dilation_w;
    for (int64_t n = 0; n < g.batch; ++n) {
      const uint16_t* rows = a.x + (n * g.in_channels + ci0) * a.plane + offset;
      const uint16_t* b = a.dy + n * a.pairs * a.cout_padded * 2 + co0 * 2;
      acc.template accumulate<void>(StridedRows<uint16_t>{rows, a.plane}, b, 2 * a.cout_padded, a.pairs);
    }
    const int64_t taps = g.kernel_h * g.kernel_w;
    const int columns = static_cast<int>(std::min<int64_t>(kBlock, g.out_channels - co0));
    acc.store(a.dw + (co0 * g.in_channels + ci0) * taps + i * g.kernel_w + j, taps, g.in_channels * taps, nullptr,
              columns);
  }

  using BlockKernel = void (*)(const Args&, int64_t, int64_t, int64_t, int64_t);
  template <size_t... R>
  static constexpr std::array<BlockKernel, kBlock + 1> table(std::index_sequence<R...>) {
    return {nullptr, &block<static_cast<int>(R) + 1>...};
  }

  // dW, float32 [Cout, Cin, kh, kw], of a one-group stride-1 convolution from its bfloat16 input
  // x [N, Cin, H, W] and grad_output dy [N, Cout, Ho, Wo] (any strides).
  static at::Tensor run(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g) {
    TORCH_CHECK(g.groups == 1 && g.stride_h == 1 && g.stride_w == 1, "tile weight gradient: one group, stride 1");
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && dy.scalar_type() == at::kBFloat16,
                "tile weight gradient: expected bfloat16 operands, got ", x.scalar_type(), " and ", dy.scalar_type());
    static constexpr auto kTable = table(std::make_index_sequence<kBlock>{});
    const int64_t top = g.pad_h, left = g.pad_w;
    const int64_t hp = std::max(top + g.in_h, (g.out_h - 1) + (g.kernel_h - 1) * g.dilation_h + 1);
    const int64_t wp = std::max(left + g.in_w, (g.out_w - 1) + (g.kernel_w - 1) * g.dilation_w + 1);
    const int64_t virtual_pixels = (g.out_h - 1) * wp + g.out_w;
    const int64_t pairs = (virtual_pixels + 1) / 2;
    const int64_t last_offset = (g.kernel_h - 1) * g.dilation_h * wp + (g.kernel_w - 1) * g.dilation_w;
    const int64_t plane = std::max(hp * wp, last_offset + 2 * pairs);
    const int64_t cout_padded = (g.out_channels + kBlock - 1) / kBlock * kBlock;
    at::Tensor planes = at::zeros({g.batch, g.in_channels, plane}, x.options());
    planes.narrow(2, 0, hp * wp)
        .view({g.batch, g.in_channels, hp, wp})
        .narrow(2, top, g.in_h)
        .narrow(3, left, g.in_w)
        .copy_(x);
    const int64_t dy_length = std::max(2 * pairs, g.out_h * wp);
    at::Tensor dy_flat = at::zeros({g.batch, cout_padded, dy_length}, dy.options());
    dy_flat.narrow(2, 0, g.out_h * wp)
        .view({g.batch, cout_padded, g.out_h, wp})
        .narrow(1, 0, g.out_channels)
        .narrow(3, 0, g.out_w)
        .copy_(dy);
    const at::Tensor dy_pairs =
        dy_flat.narrow(2, 0, 2 * pairs).view({g.batch, cout_padded, pairs, 2}).permute({0, 2, 1, 3}).contiguous();
    at::Tensor dw = at::empty({g.out_channels, g.in_channels, g.kernel_h, g.kernel_w}, x.options().dtype(at::kFloat));
    const Args a{static_cast<const uint16_t*>(planes.const_data_ptr()), plane,
                 static_cast<const uint16_t*>(dy_pairs.const_data_ptr()), pairs, cout_padded, wp, g,
                 dw.mutable_data_ptr<float>()};
    const int64_t ci_blocks = (g.in_channels + kBlock - 1) / kBlock, co_blocks = cout_padded / kBlock;
    const int64_t taps = g.kernel_h * g.kernel_w;
    at::parallel_for(0, taps * ci_blocks * co_blocks, 1, [&](int64_t begin, int64_t end) {
      const TileRun<Tiles> run;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t tap = t / (ci_blocks * co_blocks), ci0 = (t / co_blocks) % ci_blocks * kBlock;
        const int64_t co0 = t % co_blocks * kBlock;
        kTable[std::min(kBlock, g.in_channels - ci0)](a, tap / g.kernel_w, tap % g.kernel_w, ci0, co0);
      }
    });
    return dw;
  }
};

} // namespace miniplaces_ext::cpu
