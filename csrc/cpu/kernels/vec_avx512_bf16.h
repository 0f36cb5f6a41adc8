// bfloat16 pair products with AVX512-BF16 (interface: vec_bf16_pairs.h): one
// vdpbf16ps multiplies 16 pairs and adds both products to the float32 lanes,
// twice the multiplications of a float32 FMA per instruction.
// Include only after vec_avx512.h, between `#pragma GCC push_options` /
// `target("avx512f,avx512bf16,avx512bw,avx512dq,fma")` and pop_options, in a file that
// the plan (plan.cpp) takes only on CPUs with AVX512-BF16 (has_avx512_bf16: with DQ and BW).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

struct Avx512Bf16 : Avx512 {
  using Pairs = __m512i;
  static Pairs load_pairs(const uint16_t* p) { return _mm512_loadu_si512(p); }
  static Pairs broadcast_pair(const uint16_t* p) {
    int32_t pair;
    std::memcpy(&pair, p, sizeof(pair));
    return _mm512_set1_epi32(pair);
  }
  static Reg dot_pairs(Reg acc, Pairs a, Pairs b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }

  // 16 bfloat16 values (their bits) widened to float32 lanes.
  static Reg load_bf16(const uint16_t* p) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }

  // Stores lo (elements 0-15) and hi (16-31) at p rounded to bfloat16 by one VCVTNE2PS2BF16, and
  // returns true, where that is c10's rounding (to nearest even): every lane normal, zero or
  // infinite. Else stores nothing and returns false: the instruction flushes denormals to zero
  // and keeps a NaN's sign and payload, where c10 rounds denormals and writes 0x7FC0.
  static bool store_bf16(uint16_t* p, Reg lo, Reg hi) {
    constexpr int kNanOrDenormal = 0x01 | 0x80 | 0x20;  // VFPCLASSPS: quiet NaN, signalling NaN, denormal
    if ((_mm512_fpclass_ps_mask(lo, kNanOrDenormal) | _mm512_fpclass_ps_mask(hi, kNanOrDenormal)) != 0) {
      return false;
    }
    _mm512_storeu_si512(p, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    return true;
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
