// The direct kernel's accumulator block on AMX-style tiles: R <= 32 output
// pixels x 32 output channels of float32 sums, updated by bfloat16 tile products
// (TDPBF16PS: C[m][n] += sum over 16 pairs k of A[m][2k] * B[k][2n] + A[m][2k+1] * B[k][2n+1]).
// Up to 16 pixels it is a 1 x 2 block of accumulator tiles (one A tile, two B tiles,
// two products per step); above, a 2 x 2 block (two A tiles of R0 and R - R0 pixels,
// R0 = 16 unless a caller splits otherwise, e.g. two output rows of 15; the same two B
// tiles, four products per step), so that each pair of B
// loads feeds four products, as oneDNN's brgemm kernels block AMX. It has
// RegisterBlock's interface (register_block.h), so DirectConv
// (direct_conv_kernel.h) runs on it unchanged: A is 16 pairs of input channels
// of R pixels (a row of the NHWC input, pixels a stride apart), B 16 pairs x
// 16 columns of the weight packed in pairs ([pair][32 columns][2], one tile per
// half), exactly the layout pack_direct_weight_pairs writes for 32 columns.
//
// The tile unit is a policy with this interface (tiles_amx.h: the instructions;
// tiles_emulated.h: the same arithmetic in plain C++, how tests run the kernel on
// any CPU), R0 + R1 the block's pixels (R0 <= 16 in the first A tile, R1 <= 16 in the second,
// none for a 1 x 2 block):
//   begin_run() / end_run()         around a thread's run of blocks (TileRun): the tile
//                                   configuration is loaded by the first block of a run and
//                                   again only when the shape changes; end_run releases the tiles
//   configure<R0, R1>()             A0 and its accumulators hold R0 rows, A1 and its R1
//   zero_accumulators<R0, R1>()
//   multiply<R0, R1>(a0, a1, a_stride, b, b_stride)  A0 = R0 rows of 64 bytes a_stride bytes
//                                   apart from a0, A1 = R1 rows from a1 (another output row's
//                                   pixels: SplitRows); B0 / B1 = 16 rows of 64 bytes from b /
//                                   b + 32 elements, b_stride bytes apart; C0 += A B0, C1 += A B1
//                                   (per A tile)
//   store_accumulators<R0, R1>(c, c_stride)  c[r * c_stride + j], r < R0 + R1, j < 32
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
// and runs of up to 32 pixels per block; Vector, the vector traits that finish the blocks (void:
// portable loops).
template <typename TileUnit, typename VectorUnit = void>
struct TileTraits {
  using Tiles = TileUnit;
  using Vector = VectorUnit;
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 32;
};

// One thread's run of blocks on tile unit Tiles (an RAII begin_run / end_run).
template <typename Tiles>
struct TileRun {
  TileRun() { Tiles::begin_run(); }
  ~TileRun() { Tiles::end_run(); }
  TileRun(const TileRun&) = delete;
  TileRun& operator=(const TileRun&) = delete;
};

// R <= 32 operand rows a fixed stride apart in two runs: rows [0, split) from `first`, the rest
// from `second` (two output rows as one block: each A tile a strided load of its own; split is
// the block's R0).
template <typename In>
struct SplitRows {
  const In* first;
  const In* second;
  int64_t stride;
  int split;
  const In* at(int r, int64_t k) const {
    return r < split ? first + r * stride + k : second + (r - split) * stride + k;
  }
};

// No work between tile products.
struct NoInterleave {
  void step() {}
};

// R pixels, the first R0 in the first A tile (all of them up to 16).
template <typename Tiles, int R, int R0 = (R < 16 ? R : 16)>
struct TileBlock {
  static_assert(R >= 1 && R0 >= 1 && R0 <= 16 && R - R0 >= 0 && R - R0 <= 16,
                "a block holds at most two tiles of 16 rows");
  static constexpr int R1 = R - R0;
  static constexpr int kColumns = 32;
  static constexpr int64_t kPairsPerProduct = 16;  // 64 bytes of bfloat16 per tile row

  TileBlock() {
    Tiles::template configure<R0, R1>();
    Tiles::template zero_accumulators<R0, R1>();
  }

  // acc[r][j] += sum_{k < 2 * steps} rows.at(r, k) * b[(k / 2) * b_step + 2 * j + k % 2]: `rows` are R
  // rows of bfloat16 bits (StridedRows or PointerRows), `b` a panel of [steps][32][2] (b_step
  // elements per pair). Steps, the register block's step policy, is unused: tiles take pairs.
  // After each tile product, `between->step()` where given: vector work interleaved with the
  // products (DirectConv's BlockFinisher finishes the previous block). kPrefetch: B's rows are
  // asked for a few products ahead (prefetch_b).
  template <typename Steps, bool kPrefetch = true, typename Rows, typename Between = NoInterleave>
  void accumulate(const Rows& rows, const uint16_t* b, int64_t b_step, int64_t steps, Between* between = nullptr) {
    const int64_t b_stride = b_step * static_cast<int64_t>(sizeof(uint16_t));
    int64_t k = 0;
    for (; k + kPairsPerProduct <= steps; k += kPairsPerProduct) {
      if (kPrefetch && k + kPrefetchAhead + kPairsPerProduct <= steps) {
        prefetch_b(b + (k + kPrefetchAhead) * b_step, b_stride);
      }
      if constexpr (kStrided<Rows>) {
        Tiles::template multiply<R0, R1>(rows.at(0, 2 * k), rows.at(std::min(R - 1, R0), 2 * k),
                                         rows.stride * static_cast<int64_t>(sizeof(uint16_t)), b + k * b_step, b_stride);
      } else {
        stage_rows(rows, k, kPairsPerProduct);
        multiply_staged(b + k * b_step, b_stride);
      }
      if (between != nullptr) {
        between->step();
      }
    }
    if (k < steps) {  // the last < 16 pairs: both operands zero-padded to a whole product
      const int64_t tail = steps - k;
      stage_rows(rows, k, tail);
      std::memset(b_stage_, 0, sizeof(b_stage_));
      for (int64_t p = 0; p < tail; ++p) {
        std::memcpy(b_stage_[p], b + (k + p) * b_step, sizeof(b_stage_[p]));
      }
      multiply_staged(b_stage_[0], sizeof(b_stage_[0]));
    }
  }

  // dst[r * dst_row_stride + j * dst_column_stride] = acc[r][j] (+ bias[j]) for j < columns;
  // bias may be null. Whole blocks into rows of contiguous channels are stored from the tiles
  // in place.
  void store(float* dst, int64_t dst_row_stride, int64_t dst_column_stride, const float* bias, int columns) const {
    if (columns == kColumns && dst_column_stride == 1) {
      Tiles::template store_accumulators<R0, R1>(dst, dst_row_stride);
      if (bias != nullptr) {
        for (int r = 0; r < R; ++r) {
          float* row = dst + r * dst_row_stride;
          for (int j = 0; j < kColumns; ++j) {
            row[j] += bias[j];
          }
        }
      }
      return;
    }
    alignas(64) float sums[R][kColumns];
    Tiles::template store_accumulators<R0, R1>(sums[0], kColumns);
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < columns; ++j) {
        dst[r * dst_row_stride + j * dst_column_stride] = sums[r][j] + (bias != nullptr ? bias[j] : 0.0f);
      }
    }
  }

 private:
  template <typename Rows>
  static constexpr bool kStrided = requires(const Rows& rows) { rows.stride; };

  // B usually streams from L2 (a panel of the weight, or the weight gradient's grad_output pairs;
  // A's input rows stay in L1): the rows of the product four ahead, where the panel has one, are
  // asked for now. ResNet-18 layer3 3x3, bf16 channels_last, Xeon: 4.3 -> 3.8 ms; layer4 5.7 ->
  // 5.4; layer1 and layer2 unchanged. Not where each panel runs over many rows before the next
  // (DirectConv::paired_kernel): there the prefetches only competed with the tile loads.
  static constexpr int64_t kPrefetchAhead = 4 * kPairsPerProduct;
  static void prefetch_b(const uint16_t* b, int64_t b_stride) {
    const char* row = reinterpret_cast<const char*>(b);
    for (int64_t r = 0; r < kPairsPerProduct; ++r, row += b_stride) {
      __builtin_prefetch(row, 0, 3);       // B0's 64 bytes of the row
      __builtin_prefetch(row + 64, 0, 3);  // B1's
    }
  }

  // acc += the staged A rows times B.
  void multiply_staged(const uint16_t* b, int64_t b_stride) {
    Tiles::template multiply<R0, R1>(a_stage_[0], a_stage_[std::min(R - 1, R0)], sizeof(a_stage_[0]), b, b_stride);
  }

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
