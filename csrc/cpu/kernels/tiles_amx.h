// The tile unit of tile_block.h on AMX (AMX-TILE + AMX-BF16). Tiles 0 and 1 accumulate
// the first R0 pixels (columns 0-15 and 16-31), 2 and 3 the next R1; 4 and 5 hold the two A
// tiles, 6 and 7 the two halves of B. One TDPBF16PS multiplies 16 rows x 16 pairs by 16 pairs x 16
// columns: a 1 x 2 block takes two per step, a 2 x 2 block four (each B tile feeds both A tiles).
// The configuration is loaded by the first block of a thread's run (TileRun) and again only when
// the block's shape (R0, R1) changes; a run starts from "unconfigured" because another library
// (oneDNN, say) may have configured this thread's tiles since our last run, and ends by releasing
// them.
// Include only between `#pragma GCC push_options` / `target("amx-tile,amx-bf16,avx512f,...")` (AVX-512 too: every AMX CPU has it, and the dispatcher runs AMX only at the avx512 level)
// and pop_options, in a file that the plan (plan.cpp) takes only where the CPU has
// AMX-BF16 and the OS has granted this process the tile state (has_amx_bf16()).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace miniplaces_ext::cpu {
namespace {

struct AmxTiles {
  static void begin_run() { configured_rows() = 0; }
  static void end_run() {
    if (configured_rows() != 0) {
      _tile_release();
      configured_rows() = 0;
    }
  }
  template <int R0, int R1>
  static void configure() {
    constexpr int kShape = R0 * 32 + R1;  // nonzero: R0 >= 1
    if (configured_rows() == kShape) {
      return;
    }
    // Palette 1: bytes per row of each tile at 16 + 2 * t, rows of each tile at 48 + t.
    struct alignas(64) Config {
      uint8_t palette = 1;
      uint8_t start_row = 0;
      uint8_t reserved[14] = {};
      uint16_t bytes_per_row[16] = {};
      uint8_t rows[16] = {};
    } config;
    const int rows[8] = {R0, R0, R1, R1, R0, R1, 16, 16};  // C00 C01 C10 C11 A0 A1 B0 B1
    for (int t = 0; t < 8; ++t) {
      config.bytes_per_row[t] = rows[t] > 0 ? 64 : 0;
      config.rows[t] = static_cast<uint8_t>(rows[t]);
    }
    // The configuration as the instruction's memory operand, whole: GCC's _tile_loadconfig names
    // only its first 8 bytes as read, and at -O3 the stores of the tile shapes were then dropped
    // (ldtilecfg of zero shapes, then #UD at the first tile instruction).
    asm volatile("ldtilecfg %0" : : "m"(config));
    configured_rows() = kShape;
  }
  template <int R0, int R1>
  static void zero_accumulators() {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (R1 > 0) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  template <int R0, int R1>
  static void multiply(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, const uint16_t* b, int64_t b_stride) {
    // Each operand tile is loaded right before its first product and is free for the next step's
    // load right after its last: tiles are not renamed, so a load waits for the products still
    // reading the tile it overwrites.
    _tile_loadd(4, a0, a_stride);
    _tile_loadd(6, b, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (R1 > 0) {
      _tile_loadd(5, a1, a_stride);
      _tile_dpbf16ps(2, 5, 6);
    }
    _tile_loadd(7, b + 32, b_stride);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (R1 > 0) {
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  template <int R0, int R1>
  static void store_accumulators(float* c, int64_t c_stride) {
    const int64_t bytes = c_stride * static_cast<int64_t>(sizeof(float));
    _tile_stored(0, c, bytes);
    _tile_stored(1, c + 16, bytes);
    if constexpr (R1 > 0) {
      _tile_stored(2, c + R0 * c_stride, bytes);
      _tile_stored(3, c + R0 * c_stride + 16, bytes);
    }
  }

 private:
  // The shape (R0 * 32 + R1) of the configuration loaded on this thread in the current run, 0 for none.
  static int& configured_rows() {
    thread_local int rows = 0;
    return rows;
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
