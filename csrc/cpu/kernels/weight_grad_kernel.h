// The weight gradient of a one-group convolution in NHWC without an im2col
// matrix, written once for every vector ISA (instantiated by
// kernels_{portable,avx2,avx512}.cpp with the traits of vec_<isa>.h).
//
//   dW[co, c, i, j] = sum_{n, oh, ow} dy[n, oh, ow, co] * x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c]
//
// For each tap (i, j) this is a product over output pixels, dy^T [Cout, P] @
// x_tap [P, Cin]. One register block (register_block.h) holds R channels of
// one operand, broadcast, by 2 * kLanes channels of the other, loaded as
// vectors, for one tap. Its reduction runs along the pixels of an output row
// whose tap falls inside the input (padding is skipped, never read), row after
// row. The vector operand is the input (`vector_over_input`) or grad_output
// (the stem: 3 input, 64 output channels); its channel count is a multiple of
// 2 * kLanes (the caller checks).
//
// x and dy come in any layout: blocks of their rows are laid out channels
// innermost (NhwcRows, layout.h) as the kernel reaches them, about
// kBlockBytes at a time, unless they are channels_last already.
//
// Output rows are taken in chunks of about kChunkPixels pixels. Threads split
// a chunk's tiles (tap, row block, column block) in tasks of neighbouring
// tiles whose operands stay in L2 (all of a chunk's dy and x rows do not, at
// 512 channels); each sum is added by one thread in a fixed order, so results
// do not depend on the thread count. Sums go to a float32 buffer
// [kh][kw][rows][columns] (rows: the broadcast operand's channels), which the
// caller reorders to [Cout, Cin, kh, kw].
//
// Include this header only after <ATen/ATen.h>, <ATen/Parallel.h>, <algorithm>,
// <array>, <utility> and the vector traits, so that a target pragma around it
// applies to this code alone.
#pragma once

#include "../../conv.h"
#include "../layout.h"
#include "register_block.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <utility>

namespace miniplaces_ext::cpu {

template <typename Vec>
struct WeightGrad {
  static constexpr int64_t kColumns = 2 * Vec::kLanes;
  static constexpr int kMaxRows = Vec::kMaxRows;
  // Output pixels per chunk (at least one output row). 256 rather than 512: layer3.0 of
  // ResNet-18 (128 -> 256 channels, stride 2, 16-pixel rows) ~100 vs ~115 ms here, the others
  // within noise.
  static constexpr int64_t kChunkPixels = 256;
  static constexpr int64_t kRowBlocksPerTask = 8;
  static constexpr int64_t kColumnBlocksPerTask = 4;

  // Output rows whose input and grad_output rows are laid out at once (whole chunks): about
  // this many bytes of rows, which stay in L2/L3 while the chunks' tasks read them.
  static constexpr int64_t kBlockBytes = int64_t{1} << 20;

  struct Args {
    const NhwcRows& x;   // input rows [W][Cin]
    const NhwcRows& dy;  // grad_output rows [Wo][Cout]
    float* sums;      // [kh][kw][rows][columns], added to
    const ConvGeometry& g;
    bool vector_over_input;
    int64_t rows, columns;  // channel counts of the broadcast and the vector operand
  };

  // Adds to sums[i][j][row0 .. row0 + R)[col0 .. col0 + kColumns) the products of output rows
  // [r0, r1) of the batch (numbered n * Ho + oh).
  template <int R>
  static void tile(const Args& a, int64_t i, int64_t j, int64_t row0, int64_t col0, int64_t r0, int64_t r1) {
    const ConvGeometry& g = a.g;
    // Output columns whose tap j is inside the input: 0 <= ow * sw + w_offset < W.
    const int64_t w_offset = j * g.dilation_w - g.pad_w;
    const int64_t lo = w_offset >= 0 ? 0 : (g.stride_w - 1 - w_offset) / g.stride_w;
    const int64_t hi = std::min(g.out_w, g.in_w > w_offset ? (g.in_w - w_offset + g.stride_w - 1) / g.stride_w : 0);
    if (lo >= hi) {
      return;
    }
    const int64_t x_step = g.stride_w * g.in_channels;
    RegisterBlock<Vec, R> acc;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.out_h, oh = r % g.out_h;
      const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        continue;
      }
      const float* x = a.x.row(n, ih) + (lo * g.stride_w + w_offset) * g.in_channels;
      const float* dy = a.dy.row(n, oh) + lo * g.out_channels;
      if (a.vector_over_input) {
        acc.template accumulate<Float32Steps<Vec>>(ChannelRows<float>{dy + row0, g.out_channels}, x + col0, x_step,
                                                   hi - lo);
      } else {
        acc.template accumulate<Float32Steps<Vec>>(ChannelRows<float>{x + row0, x_step}, dy + col0, g.out_channels,
                                                   hi - lo);
      }
    }
    acc.add_to(a.sums + ((i * g.kernel_w + j) * a.rows + row0) * a.columns + col0, a.columns);
  }

  using TileKernel = void (*)(const Args&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);

  template <size_t... R>
  static constexpr std::array<TileKernel, sizeof...(R) + 1> tile_table(std::index_sequence<R...>) {
    return {nullptr, &tile<static_cast<int>(R) + 1>...};
  }

  // `sums`: float32 [kh][kw][rows][columns], contiguous, added to; x [N, Cin, H, W] and dy
  // [N, Cout, Ho, Wo] float32 with any strides.
  static void run(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g, bool vector_over_input,
                  const at::Tensor& sums) {
    const int64_t rows = vector_over_input ? g.out_channels : g.in_channels;
    const int64_t columns = vector_over_input ? g.in_channels : g.out_channels;
    TORCH_CHECK(g.groups == 1 && columns % kColumns == 0,
                "weight gradient kernel: expected one group and a multiple of ", kColumns, " vector channels");
    TORCH_CHECK(x.scalar_type() == at::kFloat && dy.scalar_type() == at::kFloat && sums.scalar_type() == at::kFloat &&
                    sums.is_contiguous() && sums.numel() == g.taps() * rows * columns,
                "weight gradient kernel: expected float32 operands and a contiguous [kh][kw][rows][columns] sum");
    static constexpr auto kTiles = tile_table(std::make_index_sequence<kMaxRows>{});
    NhwcRows x_rows(x), dy_rows(dy);
    const Args a{x_rows, dy_rows, sums.mutable_data_ptr<float>(), g, vector_over_input, rows, columns};
    const int64_t row_blocks = (rows + kMaxRows - 1) / kMaxRows;
    const int64_t column_blocks = columns / kColumns;
    // A task: one tap, up to kRowBlocksPerTask x kColumnBlocksPerTask tiles (the blocks shared
    // evenly among tasks), whose operands (the chunk's pixels of those channels) stay in L2 while
    // its tiles run.
    const int64_t row_tasks = (row_blocks + kRowBlocksPerTask - 1) / kRowBlocksPerTask;
    const int64_t column_tasks = (column_blocks + kColumnBlocksPerTask - 1) / kColumnBlocksPerTask;
    const int64_t tasks = g.taps() * column_tasks * row_tasks;
    const int64_t total_rows = g.batch * g.out_h;
    const int64_t chunk = std::max<int64_t>(1, kChunkPixels / std::max<int64_t>(g.out_w, 1));
    const int64_t row_bytes = (g.out_w * g.out_channels + g.stride_h * g.in_w * g.in_channels) * int64_t{4};
    const int64_t block = chunk * std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(1, row_bytes * chunk));
    for (int64_t b0 = 0; b0 < total_rows; b0 += block) {
      const int64_t b1 = std::min(total_rows, b0 + block);
      dy_rows.load(b0, b1 - b0);
      // The input rows some tap of output rows b0 .. b1 - 1 reads (images n0 .. n1).
      const int64_t n0 = b0 / g.out_h, n1 = (b1 - 1) / g.out_h;
      const int64_t top = std::clamp<int64_t>((b0 % g.out_h) * g.stride_h - g.pad_h, 0, g.in_h);
      const int64_t bottom = std::clamp<int64_t>(
          ((b1 - 1) % g.out_h) * g.stride_h - g.pad_h + (g.kernel_h - 1) * g.dilation_h + 1, 0, g.in_h);
      x_rows.load(n0 * g.in_h + top, n1 * g.in_h + bottom - (n0 * g.in_h + top));
      for (int64_t r0 = b0; r0 < b1; r0 += chunk) {
        const int64_t r1 = std::min(b1, r0 + chunk);
        at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            const int64_t rt = t % row_tasks, ct = (t / row_tasks) % column_tasks;
            const int64_t tap = t / (row_tasks * column_tasks);
            for (int64_t cb = ct * column_blocks / column_tasks; cb < (ct + 1) * column_blocks / column_tasks; ++cb) {
              for (int64_t rb = rt * row_blocks / row_tasks; rb < (rt + 1) * row_blocks / row_tasks; ++rb) {
                // Rows split evenly (256 -> 11 and 12, not 21 x 12 + 4: a 4-row tile
                // broadcasts once per 2 FMAs).
                const int64_t row0 = rb * rows / row_blocks, row1 = (rb + 1) * rows / row_blocks;
                kTiles[row1 - row0](a, tap / g.kernel_w, tap % g.kernel_w, row0, cb * kColumns, r0, r1);
              }
            }
          }
        });
      }
    }
  }
};

} // namespace miniplaces_ext::cpu
