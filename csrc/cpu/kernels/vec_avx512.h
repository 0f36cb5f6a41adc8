// Vector traits for AVX-512F: 16 lanes (interface: vec_portable.h). A register
// block of 12 rows x 32 columns keeps 24 of the 32 zmm registers as accumulators.
// Include only between `#pragma GCC push_options` / `target("avx512f,fma")` and
// pop_options, in a file that the plan (plan.cpp) takes only on CPUs with AVX-512F.
#pragma once

#include <immintrin.h>

namespace miniplaces_ext::cpu {
namespace {

struct Avx512 {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 12;
  static __mmask16 mask(int n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1); }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg broadcast(float v) { return _mm512_set1_ps(v); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load_partial(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void store_partial(float* p, Reg v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg relu(Reg a) { return _mm512_max_ps(zero(), a); }  // a NaN stays NaN (max returns its second operand)
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
};

} // namespace
} // namespace miniplaces_ext::cpu
