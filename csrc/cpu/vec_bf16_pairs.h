// bfloat16 pair products for the register block: one float32 lane accumulates
// a[2p] * b[2p] + a[2p+1] * b[2p+1] of two bfloat16 operands held as a pair in
// 32 bits. The interface a pair-capable vector trait adds to vec_portable.h's:
//   Pairs                       kLanes pairs of bfloat16 (one per float32 lane)
//   load_pairs(p)               kLanes pairs from p[0 .. 2 * kLanes)
//   broadcast_pair(p)           the pair p[0], p[1] in every lane
//   dot_pairs(acc, a, b)        acc + a.lo * b.lo + a.hi * b.hi, lane by lane
//
// EmulatedBf16Pairs<Vec> adds it to any vector trait with two float32 FMAs per
// pair (the products of two bfloat16 values are exact in float32, so this is
// the instruction's arithmetic, up to denormals, which it flushes): the pair
// kernel then runs and is tested on CPUs without AVX512-BF16 (see
// MINIPLACES_CPU_BF16 in cpu_dispatch.h). vec_avx512_bf16.h is the native one.
//
// Include only after the trait it extends, inside the same target pragma.
#pragma once

#include <cstdint>
#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

// A GCC vector of 32-bit words as wide as a register of kBytes (spelled out:
// GCC ignores vector_size on a typedef that depends on a template parameter).
template <int kBytes>
struct WordVector;
template <>
struct WordVector<16> {
  typedef uint32_t type __attribute__((vector_size(16)));
};
template <>
struct WordVector<32> {
  typedef uint32_t type __attribute__((vector_size(32)));
};
template <>
struct WordVector<64> {
  typedef uint32_t type __attribute__((vector_size(64)));
};

template <typename Vec>
struct EmulatedBf16Pairs : Vec {
  using Reg = typename Vec::Reg;
  static constexpr int kLanes = Vec::kLanes;
  using Pairs = typename WordVector<sizeof(Reg)>::type;

  static Pairs load_pairs(const uint16_t* p) {
    Pairs r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static Pairs broadcast_pair(const uint16_t* p) {
    uint32_t pair;
    std::memcpy(&pair, p, sizeof(pair));
    Pairs r;
    for (int i = 0; i < kLanes; ++i) {
      r[i] = pair;
    }
    return r;
  }
  // A bfloat16 is the upper half of a float32: the low element of a pair is
  // shifted up, the high one masked in place.
  static Reg dot_pairs(Reg acc, Pairs a, Pairs b) {
    acc = Vec::fma(as_floats(a & 0xFFFF0000u), as_floats(b & 0xFFFF0000u), acc);
    return Vec::fma(as_floats(a << 16), as_floats(b << 16), acc);
  }

 private:
  static Reg as_floats(Pairs bits) {
    Reg r;
    std::memcpy(&r, &bits, sizeof(r));
    return r;
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
