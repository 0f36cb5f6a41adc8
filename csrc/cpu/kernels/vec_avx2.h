// Vector traits for AVX2 + FMA: 8 lanes (interface: vec_portable.h). A register
// block of 6 rows x 16 columns keeps 12 of the 16 ymm registers as accumulators.
// Include only between `#pragma GCC push_options` / `target("avx2,fma")` and
// pop_options, in a file that the plan (plan.cpp) takes only on CPUs with AVX2 and FMA.
#pragma once

#include <immintrin.h>

namespace miniplaces_ext::cpu {
namespace {

struct Avx2 {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 6;
  // Lane i is read/written when i < n.
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg broadcast(float v) { return _mm256_set1_ps(v); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load_partial(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static void store_partial(float* p, Reg v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg relu(Reg a) { return _mm256_max_ps(zero(), a); }  // a NaN stays NaN (max returns its second operand)
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
};

} // namespace
} // namespace miniplaces_ext::cpu
