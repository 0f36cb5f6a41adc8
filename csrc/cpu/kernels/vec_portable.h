// Vector traits for any CPU: GCC/Clang vector extensions of 4 floats, which
// compile to the baseline SIMD of the target (SSE2 on x86-64, NEON on aarch64)
// with no target-specific code. The interface every kernel template uses:
//   Reg                     one vector register of kLanes floats
//   kLanes, kMaxRows        lanes per register; rows per register block
//   zero(), broadcast(f), load(p), load_partial(p, n), store(p, r),
//   store_partial(p, r, n), fma(a, b, c) = a*b + c, add, sub, mul, relu (max with 0, NaN kept)
// (n <= kLanes valid lanes; partial loads fill the other lanes with zeros).
#pragma once

#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

struct Portable {
  typedef float Reg __attribute__((vector_size(16)));
  static constexpr int kLanes = 4;
  static constexpr int kMaxRows = 6;
  static Reg zero() { return Reg{}; }
  static Reg broadcast(float v) { return Reg{} + v; }
  static Reg load(const float* p) {
    Reg r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static Reg load_partial(const float* p, int n) {
    Reg r{};
    for (int i = 0; i < n; ++i) {
      r[i] = p[i];
    }
    return r;
  }
  static void store(float* p, Reg v) { std::memcpy(p, &v, sizeof(v)); }
  static void store_partial(float* p, Reg v, int n) {
    for (int i = 0; i < n; ++i) {
      p[i] = v[i];
    }
  }
  static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg relu(Reg a) { return a < zero() ? zero() : a; }  // a NaN stays NaN
  static Reg sub(Reg a, Reg b) { return a - b; }
  static Reg mul(Reg a, Reg b) { return a * b; }
};

} // namespace
} // namespace miniplaces_ext::cpu
