// The tile unit of tile_block.h in plain C++: two 16 x 16 float32 accumulator
// tiles per thread and TDPBF16PS's arithmetic (each pair's two products, exact
// in float32, added to the sum in order), so that the tile kernel runs, and is
// tested, on CPUs without AMX (MINIPLACES_CPU_BF16=tiles; see cpu_dispatch.h).
// For tests, not speed.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

struct EmulatedTiles {
  static void configure(int rows) { state().rows = rows; }
  static void zero_accumulators() { std::memset(state().c, 0, sizeof(state().c)); }
  static void multiply(const uint16_t* a, int64_t a_stride, const uint16_t* b, int64_t b_stride) {
    State& s = state();
    for (int half = 0; half < 2; ++half) {
      for (int m = 0; m < s.rows; ++m) {
        const uint16_t* a_row = element(a, m * a_stride);
        for (int n = 0; n < 16; ++n) {
          float sum = s.c[half][m][n];
          for (int k = 0; k < 16; ++k) {
            const uint16_t* b_pair = element(b, k * b_stride) + 32 * half + 2 * n;
            sum += c10::detail::f32_from_bits(a_row[2 * k]) * c10::detail::f32_from_bits(b_pair[0]) +
                c10::detail::f32_from_bits(a_row[2 * k + 1]) * c10::detail::f32_from_bits(b_pair[1]);
          }
          s.c[half][m][n] = sum;
        }
      }
    }
  }
  static void store_accumulators(float* c) {
    const State& s = state();
    for (int m = 0; m < s.rows; ++m) {
      std::memcpy(c + m * 32, s.c[0][m], sizeof(s.c[0][m]));
      std::memcpy(c + m * 32 + 16, s.c[1][m], sizeof(s.c[1][m]));
    }
  }

 private:
  struct State {
    int rows = 16;
    float c[2][16][16];
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  // The element `bytes` bytes after p.
  static const uint16_t* element(const uint16_t* p, int64_t bytes) {
    return reinterpret_cast<const uint16_t*>(reinterpret_cast<const char*>(p) + bytes);
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
