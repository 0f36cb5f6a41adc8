// The tile unit of tile_block.h on AMX (AMX-TILE + AMX-BF16): tiles 0 and 1
// accumulate, 2 holds A, 3 and 4 the two halves of B; one TDPBF16PS per half
// multiplies 16 rows x 16 pairs by 16 pairs x 16 columns. The tile
// configuration is loaded by every block (a thread's tiles may have been
// configured by another library, oneDNN say, since our last block).
// Include only between `#pragma GCC push_options` / `target("amx-tile,amx-bf16")`
// and pop_options, in a file that cpu_dispatch.cpp calls only where the CPU has
// AMX-BF16 and the OS has granted this process the tile state (has_amx_bf16()).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace miniplaces_ext::cpu {
namespace {

struct AmxTiles {
  static void configure(int rows) {
    // Palette 1: bytes per row of each tile at 16 + 2 * t, rows of each tile at 48 + t.
    struct alignas(64) Config {
      uint8_t palette = 1;
      uint8_t start_row = 0;
      uint8_t reserved[14] = {};
      uint16_t bytes_per_row[16] = {};
      uint8_t rows[16] = {};
    } config;
    for (int t = 0; t < 5; ++t) {
      config.bytes_per_row[t] = 64;
      config.rows[t] = static_cast<uint8_t>(t < 3 ? rows : 16);  // C0, C1, A: `rows`; B0, B1: 16 pairs
    }
    _tile_loadconfig(&config);
  }
  static void zero_accumulators() {
    _tile_zero(0);
    _tile_zero(1);
  }
  static void multiply(const uint16_t* a, int64_t a_stride, const uint16_t* b, int64_t b_stride) {
    _tile_loadd(2, a, a_stride);
    _tile_loadd(3, b, b_stride);
    _tile_loadd(4, b + 32, b_stride);
    _tile_dpbf16ps(0, 2, 3);
    _tile_dpbf16ps(1, 2, 4);
  }
  static void store_accumulators(float* c) {
    _tile_stored(0, c, 32 * sizeof(float));
    _tile_stored(1, c + 16, 32 * sizeof(float));
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
