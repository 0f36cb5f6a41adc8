// The tile unit of tile_block.h in plain C++: four 16 x 16 float32 accumulator tiles per thread
// and TDPBF16PS's arithmetic as Intel's SDM defines it, so that the tile kernel runs, and is
// tested, on CPUs without AMX (the bf16 option `tiles`; see cpu_options.h). Per instruction, each
// output element sums the products of its 16 even bfloat16 elements and, apart, of its 16 odd ones,
// each sum starting from zero and rounded to float32 at every step (the products are exact); then
// it adds the odd sum to the even one and that to the accumulator. Input denormals are read as
// zero, output denormals flushed to zero, rounding is to nearest even (MXCSR is not consulted).
// For tests, not speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

struct EmulatedTiles {
  static void begin_run() {}
  static void end_run() {}
  template <int R0, int R1>
  static void configure() {}
  template <int R0, int R1>
  static void zero_accumulators() {
    std::memset(state().c, 0, sizeof(state().c));
  }
  // Rows [0, R0 + R1) of A against B: the rows of both A tiles (R0 from a0 and R1 from a1) in one
  // loop, each row into the accumulators of its tile.
  template <int R0, int R1>
  static void multiply(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, const uint16_t* b, int64_t b_stride) {
    State& s = state();
    for (int half = 0; half < 2; ++half) {
      for (int m = 0; m < R0 + R1; ++m) {
        const uint16_t* a_row = m < R0 ? element(a0, m * a_stride) : element(a1, (m - R0) * a_stride);
        for (int n = 0; n < 16; ++n) {
          float even = 0.0f, odd = 0.0f;
          for (int k = 0; k < 16; ++k) {
            const uint16_t* b_pair = element(b, k * b_stride) + 32 * half + 2 * n;
            even = flushed(std::fma(operand(a_row[2 * k]), operand(b_pair[0]), even));
            odd = flushed(std::fma(operand(a_row[2 * k + 1]), operand(b_pair[1]), odd));
          }
          float& c = s.c[m][16 * half + n];
          c = flushed(c + flushed(even + odd));
        }
      }
    }
  }
  template <int R0, int R1>
  static void store_accumulators(float* c, int64_t c_stride) {
    for (int m = 0; m < R0 + R1; ++m) {
      std::memcpy(c + m * c_stride, state().c[m], sizeof(state().c[m]));
    }
  }

 private:
  struct State {
    float c[32][32];  // pixel x column: the four accumulator tiles
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  // The element `bytes` bytes after p.
  static const uint16_t* element(const uint16_t* p, int64_t bytes) {
    return reinterpret_cast<const uint16_t*>(reinterpret_cast<const char*>(p) + bytes);
  }
  // `bits` with a zero exponent field (a denormal, or zero) as a zero of the same sign.
  static float zero_if_denormal(uint32_t bits) {
    bits &= (bits & 0x7F800000u) == 0 ? 0x80000000u : 0xFFFFFFFFu;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  // A bfloat16 as the instruction reads it: the upper half of a float32, a denormal as zero.
  static float operand(uint16_t bf16) { return zero_if_denormal(static_cast<uint32_t>(bf16) << 16); }
  // A float32 result as the instruction writes it: a denormal flushed to zero.
  static float flushed(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    return zero_if_denormal(bits);
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
