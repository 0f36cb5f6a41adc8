// bfloat16 pair products with AVX512-BF16 (interface: vec_bf16_pairs.h): one
// vdpbf16ps multiplies 16 pairs and adds both products to the float32 lanes,
// twice the multiplications of a float32 FMA per instruction.
// Include only after vec_avx512.h, between `#pragma GCC push_options` /
// `target("avx512f,avx512bf16,fma")` and pop_options, in a file that
// the plan (plan.cpp) takes only on CPUs with AVX512-BF16.
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
};

} // namespace
} // namespace miniplaces_ext::cpu
