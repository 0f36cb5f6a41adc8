// The direct kernel's accumulator block on AMX-style tiles: R <= 16 output
// pixels x 32 output channels of float32 sums in two 16 x 16 accumulator
// tiles, updated by bfloat16 tile products (TDPBF16PS: C[m][n] += sum over 16
// pairs k of A[m][2k] * B[k][2n] + A[m][2k+1] * B[k][2n+1]). It has
// RegisterBlock's interface (register_block.h), so DirectConv
// (direct_conv_kernel.h) runs on it unchanged: A is 16 pairs of input channels
// of R pixels (a row of the NHWC input, pixels a stride apart), B 16 pairs x
// 16 columns of the weight packed in pairs ([pair][32 columns][2], one tile per
// half), exactly the layout pack_direct_weight_pairs writes for 32 columns.
//
// The tile unit is a policy with this interface (tiles_amx.h: the instructions;
// tiles_emulated.h: the same arithmetic in plain C++, how tests run the kernel on
// any CPU):
//   configure(rows)                  A and the accumulators hold `rows` rows; B 16
//   zero_accumulators()
//   multiply(a, a_stride, b, b_stride)  A = rows of 64 bytes a_stride bytes apart,
//                                    B0 / B1 = 16 rows of 64 bytes from b / b + 32
//                                    elements, b_stride bytes apart; C0 += A B0, C1 += A B1
//   store_accumulators(c)            c[r][j], r < rows, j < 32 (C0 columns 0-15, C1 16-31)
//
// A depth that is not a multiple of 16 pairs, and pixels that are not a fixed
// stride apart (borders reading a row of zeros: PointerRows), go through small
// zero-filled staging tiles on the stack.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace miniplaces_ext::cpu {

// The vector-trait face of a tile unit for DirectConv: 32 output channels (kBlock = 2 * kLanes)
// and runs of up to 16 pixels per block.
template <typename TileUnit>
struct TileTraits {
  using Tiles = TileUnit;
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 16;
};

template <typename Tiles, int R>
struct TileBlock {
  static_assert(R >= 1 && R <= 16, "a tile holds at most 16 rows");
  static constexpr int kColumns = 32;
  static constexpr int64_t kPairsPerProduct = 16;  // 64 bytes of bfloat16 per tile row

  TileBlock() {
    Tiles::configure(R);
    Tiles::zero_accumulators();
  }

  // acc[r][j] += sum_{k < 2 * steps} rows.at(r, k) * b[(k / 2) * b_step + 2 * j + k % 2]: `rows` are R
  // rows of bfloat16 bits (StridedRows or PointerRows), `b` a panel of [steps][32][2] (b_step
  // elements per pair). Steps, the register block's step policy, is unused: tiles take pairs.
  template <typename Steps, typename Rows>
  void accumulate(const Rows& rows, const uint16_t* b, int64_t b_step, int64_t steps) {
    const int64_t b_stride = b_step * static_cast<int64_t>(sizeof(uint16_t));
    int64_t k = 0;
    for (; k + kPairsPerProduct <= steps; k += kPairsPerProduct) {
      if constexpr (kStrided<Rows>) {
        Tiles::multiply(rows.at(0, 2 * k), rows.stride * static_cast<int64_t>(sizeof(uint16_t)), b + k * b_step,
                        b_stride);
      } else {
        stage_rows(rows, k, kPairsPerProduct);
        Tiles::multiply(a_stage_[0], sizeof(a_stage_[0]), b + k * b_step, b_stride);
      }
    }
    if (k < steps) {  // the last < 16 pairs: both operands zero-padded to a whole product
      const int64_t tail = steps - k;
      stage_rows(rows, k, tail);
      std::memset(b_stage_, 0, sizeof(b_stage_));
      for (int64_t p = 0; p < tail; ++p) {
        std::memcpy(b_stage_[p], b + (k + p) * b_step, sizeof(b_stage_[p]));
      }
      Tiles::multiply(a_stage_[0], sizeof(a_stage_[0]), b_stage_[0], sizeof(b_stage_[0]));
    }
  }

  // dst[r * dst_row_stride + j * dst_column_stride] = acc[r][j] (+ bias[j]) for j < columns;
  // bias may be null.
  void store(float* dst, int64_t dst_row_stride, int64_t dst_column_stride, const float* bias, int columns) const {
    alignas(64) float sums[R][kColumns];
    Tiles::store_accumulators(sums[0]);
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < columns; ++j) {
        dst[r * dst_row_stride + j * dst_column_stride] = sums[r][j] + (bias != nullptr ? bias[j] : 0.0f);
      }
    }
  }

 private:
  template <typename Rows>
  static constexpr bool kStrided = requires(const Rows& rows) { rows.stride; };

  // Pairs [k, k + count) of each row into the staging tile, the rest of its 16 pairs zero.
  template <typename Rows>
  void stage_rows(const Rows& rows, int64_t k, int64_t count) {
    if (count < kPairsPerProduct) {
      std::memset(a_stage_, 0, sizeof(a_stage_));
    }
    for (int r = 0; r < R; ++r) {
      std::memcpy(a_stage_[r], rows.at(r, 2 * k), static_cast<size_t>(count) * 2 * sizeof(uint16_t));
    }
  }

  alignas(64) uint16_t a_stage_[R][2 * kPairsPerProduct];
  alignas(64) uint16_t b_stage_[kPairsPerProduct][2 * kColumns];
};

} // namespace miniplaces_ext::cpu
