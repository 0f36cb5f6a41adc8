// Winograd F(4x4, 3x3) float32 convolution in NHWC, written once for every
// vector ISA (instantiated by kernels_{portable,avx2,avx512}.cpp with the
// traits of vec_<isa>.h, each compiled for its own target).
//
// For 3x3, stride 1, dilation 1, one group. The output is cut into 4x4 tiles;
// each reads a 6x6 input tile (zero outside the input: padding is never
// materialised). With the transforms of Lavin & Gray (2016), per tile and
// channel pair
//   Y = A^T [ (G w G^T) .* (B^T d B) ] A,
// so the 36 positions xi of the transformed 6x6 tile are 36 independent matrix
// products  M[xi][tile][Cout] = V[xi][tile][Cin] @ U[xi][Cin][Cout]:
// 36 multiply-adds per 4x4 output tile and channel pair instead of 16 * 9 = 144
// (4x fewer), plus transforms that cost O(Cin + Cout) per tile.
//
// Blocking: a thread takes kTilesPerBlock tiles at a time; it transforms their
// input into V (fused zero padding), runs the 36 products with the register
// block of register_block.h against the pre-transformed weight U (packed
// [36][blocks][Cin][kBlock], kBlock = 2 * kLanes output channels, by
// winograd_transform_weight in packed_weights.cpp), and transforms M back into
// the output (+ bias). V and M stay in the thread's cache.
// Each output element is written by one thread: results do not depend on the
// number of threads.
//
// Include this header only after <ATen/ATen.h>, <ATen/Parallel.h>, <algorithm>,
// <array>, <vector> and the vector traits, so that a target pragma around it
// applies to this code alone.
#pragma once

#include "../../conv.h"
#include "../plan.h"
#include "input_rows.h"
#include "register_block.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

namespace miniplaces_ext::cpu {

template <typename Vec>
struct WinogradConv {
  using Reg = typename Vec::Reg;
  static constexpr int kLanes = Vec::kLanes;
  static constexpr int64_t kBlock = 2 * kLanes;
  static constexpr int kMaxRows = Vec::kMaxRows;
  static constexpr int kOut = 4;     // output tile edge
  static constexpr int kIn = 6;      // input tile edge
  static constexpr int kPoints = 36; // transformed tile size
  // Tiles a thread transforms and multiplies at a time (a multiple of kMaxRows).
  static constexpr int64_t kTilesPerBlock = 4 * kMaxRows;

  struct Args {
    const float* x;     // input [N, Cin, H, W], addressed through x_strides
    Strides4 x_strides;
    const float* u;     // transformed weight [36][blocks][Cin][kBlock]
    const float* bias;  // [Cout] or nullptr
    float* out;         // [N, Cout, Ho, Wo] in any layout, addressed through out_strides
    Strides4 out_strides;
    const ConvGeometry& g;
    int64_t blocks;     // output-channel blocks
    int64_t tiles_h, tiles_w;
    const OutputEpilogue& epilogue;  // float32 residual only (Winograd's output is float32)
  };

  // (image, tile row, tile column) of tile number `tile`.
  static std::array<int64_t, 3> tile_position(const Args& a, int64_t tile) {
    return {tile / (a.tiles_w * a.tiles_h), (tile / a.tiles_w) % a.tiles_h, tile % a.tiles_w};
  }

  // r = B^T d for one column of six vectors.
  static void input_1d(const Reg d[kIn], Reg r[kIn]) {
    const Reg four = Vec::broadcast(4.f), two = Vec::broadcast(2.f);
    const Reg d4_d2 = Vec::sub(d[4], d[2]);
    const Reg d4_d2x4 = Vec::sub(d[4], Vec::mul(four, d[2]));  // d4 - 4 d2
    const Reg d3_d1x4 = Vec::sub(d[3], Vec::mul(four, d[1]));  // d3 - 4 d1
    const Reg d3_d1x2 = Vec::mul(two, Vec::sub(d[3], d[1]));   // 2 (d3 - d1)
    r[0] = Vec::add(Vec::fma(four, d[0], Vec::mul(Vec::broadcast(-5.f), d[2])), d[4]);
    r[1] = Vec::add(d4_d2x4, d3_d1x4);
    r[2] = Vec::sub(d4_d2x4, d3_d1x4);
    r[3] = Vec::add(d4_d2, d3_d1x2);
    r[4] = Vec::sub(d4_d2, d3_d1x2);
    r[5] = Vec::add(Vec::fma(four, d[1], Vec::mul(Vec::broadcast(-5.f), d[3])), d[5]);
  }

  // y = A^T m for one column of six vectors.
  static void output_1d(const Reg m[kIn], Reg y[kOut]) {
    const Reg s12 = Vec::add(m[1], m[2]), d12 = Vec::sub(m[1], m[2]);
    const Reg s34 = Vec::add(m[3], m[4]), d34 = Vec::sub(m[3], m[4]);
    y[0] = Vec::add(Vec::add(m[0], s12), s34);
    y[1] = Vec::fma(Vec::broadcast(2.f), d34, d12);
    y[2] = Vec::fma(Vec::broadcast(4.f), s34, s12);
    y[3] = Vec::add(Vec::fma(Vec::broadcast(8.f), d34, d12), m[5]);
  }

  // Writes B^T d B of one tile, channels [c0, c0 + lanes), to v[xi * v_stride]: `rows` are the
  // tile's six input rows (InputRows::rows, nullptr outside the input), iw0 its first column.
  static void transform_input(const Args& a, const float* const* rows, int64_t iw0, int64_t c0, int lanes, float* v,
                              int64_t v_stride) {
    const ConvGeometry& g = a.g;
    Reg d[kIn][kIn];
    for (int i = 0; i < kIn; ++i) {
      for (int j = 0; j < kIn; ++j) {
        const int64_t iw = iw0 + j;
        if (rows[i] == nullptr || iw < 0 || iw >= g.in_w) {
          d[i][j] = Vec::zero();
        } else {
          const float* p = rows[i] + iw * g.in_channels + c0;
          d[i][j] = lanes == kLanes ? Vec::load(p) : Vec::load_partial(p, lanes);
        }
      }
    }
    Reg column[kIn], t[kIn][kIn];
    for (int j = 0; j < kIn; ++j) {  // t = B^T d, column by column
      for (int i = 0; i < kIn; ++i) {
        column[i] = d[i][j];
      }
      Reg r[kIn];
      input_1d(column, r);
      for (int i = 0; i < kIn; ++i) {
        t[i][j] = r[i];
      }
    }
    for (int i = 0; i < kIn; ++i) {  // V = t B, row by row
      Reg r[kIn];
      input_1d(t[i], r);
      for (int j = 0; j < kIn; ++j) {
        float* dst = v + (i * kIn + j) * v_stride;
        if (lanes == kLanes) {
          Vec::store(dst, r[j]);
        } else {
          Vec::store_partial(dst, r[j], lanes);
        }
      }
    }
  }

  // Writes A^T m A (+ bias) of tile `tile`, channels [c0, c0 + lanes), read
  // from m[xi * m_stride], to the output pixels of the tile inside the output.
  static void transform_output(const Args& a, int64_t tile, int64_t c0, int lanes, const float* m,
                               int64_t m_stride) {
    const ConvGeometry& g = a.g;
    const auto [n, th, tw] = tile_position(a, tile);
    Reg t[kOut][kIn];
    for (int j = 0; j < kIn; ++j) {  // t = A^T m, column by column
      Reg column[kIn], y[kOut];
      for (int i = 0; i < kIn; ++i) {
        column[i] = Vec::load(m + (i * kIn + j) * m_stride);
      }
      output_1d(column, y);
      for (int i = 0; i < kOut; ++i) {
        t[i][j] = y[i];
      }
    }
    const Reg b = a.bias == nullptr ? Vec::zero() : Vec::load_partial(a.bias + c0, lanes);
    const int rows = static_cast<int>(std::min<int64_t>(kOut, g.out_h - th * kOut));
    const int cols = static_cast<int>(std::min<int64_t>(kOut, g.out_w - tw * kOut));
    for (int i = 0; i < rows; ++i) {  // Y = t A, row by row
      Reg y[kOut];
      output_1d(t[i], y);
      const auto& s = a.out_strides;
      const int64_t oh = th * kOut + i;
      float* dst = a.out + n * s.n + c0 * s.c + oh * s.h + tw * kOut * s.w;
      const OutputEpilogue& e = a.epilogue;
      for (int j = 0; j < cols; ++j) {
        Reg v = Vec::add(y[j], b);
        if (e.residual != nullptr) {  // + residual, in registers
          const float* r = static_cast<const float*>(e.residual) + e.strides.at(n, c0, oh, tw * kOut + j);
          v = Vec::add(v, load_lanes<Vec>(r, e.strides.c, lanes));
        }
        if (e.relu) {
          v = Vec::relu(v);
        }
        store_lanes<Vec>(dst + j * s.w, s.c, v, lanes);
      }
    }
  }

  using ProductKernel = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t);

  // R rows of M[xi] (R tiles x kBlock output channels) from V[xi] and U[xi][block].
  template <int R>
  static void product(const float* v, int64_t cin, const float* u, int64_t depth, float* m, int64_t m_stride) {
    RegisterBlock<Vec, R> acc;
    acc.template accumulate<Float32Steps<Vec>>(StridedRows<float>{v, cin}, u, kBlock, depth);
    acc.store(m, m_stride, 1, nullptr, static_cast<int>(kBlock));
  }

  template <size_t... R>
  static constexpr std::array<ProductKernel, sizeof...(R) + 1> product_table(std::index_sequence<R...>) {
    return {nullptr, &product<static_cast<int>(R) + 1>...};
  }

  static void tile_blocks(const Args& a) {
    static constexpr auto kProduct = product_table(std::make_index_sequence<kMaxRows>{});
    const ConvGeometry& g = a.g;
    const int64_t cin = g.in_channels;
    const int64_t cout_padded = a.blocks * kBlock;
    const int64_t tiles = g.batch * a.tiles_h * a.tiles_w;
    const int64_t tile_blocks = (tiles + kTilesPerBlock - 1) / kTilesPerBlock;
    at::parallel_for(0, tile_blocks, 1, [&](int64_t begin, int64_t end) {
      // V[xi][tile][Cin] and M[xi][tile][Cout padded] of one block of tiles.
      std::vector<float> v(kPoints * kTilesPerBlock * cin);
      std::vector<float> m(kPoints * kTilesPerBlock * cout_padded);
      InputRows<float> input(a.x, a.x_strides, g, input_row_slots(a.x_strides, g), kIn);
      for (int64_t tb = begin; tb < end; ++tb) {
        const int64_t tile0 = tb * kTilesPerBlock;
        const int64_t count = std::min(kTilesPerBlock, tiles - tile0);
        for (int64_t t = 0; t < count; ++t) {
          const auto [n, th, tw] = tile_position(a, tile0 + t);
          const float* const* rows = input.rows(n, th * kOut - g.pad_h, 1, kIn, 0);
          for (int64_t c0 = 0; c0 < cin; c0 += kLanes) {
            transform_input(a, rows, tw * kOut - g.pad_w, c0, static_cast<int>(std::min<int64_t>(kLanes, cin - c0)),
                            v.data() + t * cin + c0, kTilesPerBlock * cin);
          }
        }
        for (int xi = 0; xi < kPoints; ++xi) {
          const float* v_xi = v.data() + xi * kTilesPerBlock * cin;
          float* m_xi = m.data() + xi * kTilesPerBlock * cout_padded;
          for (int64_t blk = 0; blk < a.blocks; ++blk) {
            const float* u_panel = a.u + (xi * a.blocks + blk) * cin * kBlock;
            for (int64_t t = 0; t < count; t += kMaxRows) {
              kProduct[std::min<int64_t>(kMaxRows, count - t)](v_xi + t * cin, cin, u_panel, cin,
                                                               m_xi + t * cout_padded + blk * kBlock, cout_padded);
            }
          }
        }
        for (int64_t t = 0; t < count; ++t) {
          for (int64_t c0 = 0; c0 < g.out_channels; c0 += kLanes) {
            transform_output(a, tile0 + t, c0, static_cast<int>(std::min<int64_t>(kLanes, g.out_channels - c0)),
                             m.data() + t * cout_padded + c0, kTilesPerBlock * cout_padded);
          }
        }
      }
    });
  }

  // Rows of a thread's input cache (InputRows): 0 to read in place, else the rows of two
  // consecutive tile rows (tiles run row by row).
  static int64_t input_row_slots(const Strides4& s, const ConvGeometry& g) {
    return InputRows<float>::in_place(s, g) ? 0 : std::min<int64_t>(g.in_h, kIn + kOut);
  }

  // `u` is winograd_transform_weight(weight, kBlock), `x` float32 [N, C, H, W] with any strides
  // (laid out row by row as tiles reach them, or converted up front when those rows exceed
  // kInputRowCacheBytes). Writes `out`, float32 [N, Cout, Ho, Wo] with any strides.
  static void run(const at::Tensor& x, const at::Tensor& u, const c10::optional<at::Tensor>& bias,
                  const ConvGeometry& g, const OutputEpilogue& epilogue, const at::Tensor& out) {
    TORCH_CHECK(epilogue.residual == nullptr || !epilogue.residual_bf16, "Winograd: the residual must be float32");
    TORCH_CHECK(winograd_applies(g), "Winograd F(4x4,3x3) needs a 3x3, stride-1, dilation-1, one-group convolution");
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.sizes() == at::IntArrayRef({g.batch, g.in_channels, g.in_h, g.in_w}),
                "Winograd: expected a float32 input of size [", g.batch, ", ", g.in_channels, ", ", g.in_h, ", ",
                g.in_w, "], got ", x.scalar_type(), " ", x.sizes());
    const at::Tensor input = InputRows<float>::readable(x, g, input_row_slots(strides_of(x), g), true);
    const int64_t blocks = (g.out_channels + kBlock - 1) / kBlock;
    TORCH_CHECK(u.numel() == kPoints * blocks * kBlock * g.in_channels, "Winograd: transformed weight of the wrong size");
    const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
    check_output(out, g);
    if (out.numel() > 0) {
      tile_blocks(Args{input.const_data_ptr<float>(), strides_of(input), u.const_data_ptr<float>(),
                       b.defined() ? b.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(),
                       strides_of(out), g, blocks,
                       (g.out_h + kOut - 1) / kOut, (g.out_w + kOut - 1) / kOut, epilogue});
    }
  }
};

} // namespace miniplaces_ext::cpu
