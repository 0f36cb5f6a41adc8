// bfloat16 pair products for the register block: one float32 lane accumulates
// a[2p] * b[2p] + a[2p+1] * b[2p+1] of two bfloat16 operands held as a pair in
// 32 bits. The interface a pair-capable vector trait adds to vec_portable.h's:
//   Pairs                       kLanes pairs of bfloat16 (one per float32 lane)
//   load_pairs(p)               kLanes pairs from p[0 .. 2 * kLanes)
//   broadcast_pair(p)           the pair p[0], p[1] in every lane
//   dot_pairs(acc, a, b)        acc + a.lo * b.lo + a.hi * b.hi, lane by lane
//
// EmulatedBf16Pairs<Vec> adds it to any vector trait as VDPBF16PS is defined in Intel's SDM:
// per lane, the high pair's product is added to the sum, then the low pair's, each with one
// rounding to nearest even (an FMA: the products of two bfloat16 values are exact in float32),
// input denormals read as zero and output denormals flushed to zero, whatever MXCSR says. The
// pair kernel then runs and is tested on CPUs without AVX512-BF16 (the bf16 option `pairs`, see
// cpu_options.h), and test_bf16_emulations_match_native_instructions compares it bit for bit with
// vdpbf16ps where the CPU has it. (At the portable level Vec::fma rounds the product first, which
// differs only where a product underflows.) vec_avx512_bf16.h is the native one.
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
    acc = flushed(Vec::fma(operands(a & 0xFFFF0000u), operands(b & 0xFFFF0000u), acc));
    return flushed(Vec::fma(operands(a << 16), operands(b << 16), acc));
  }

 private:
  // Each lane with a zero exponent field (a denormal, or zero) as a zero of the same sign.
  static Pairs zero_if_denormal(Pairs bits) {
    const Pairs denormal = (Pairs)((bits & 0x7F800000u) == 0);  // all ones where so
    return bits & ~(denormal & 0x7FFFFFFFu);
  }
  static Reg operands(Pairs bits) { return as_floats(zero_if_denormal(bits)); }
  static Reg flushed(Reg v) {
    Pairs bits;
    std::memcpy(&bits, &v, sizeof(bits));
    return as_floats(zero_if_denormal(bits));
  }
  static Reg as_floats(Pairs bits) {
    Reg r;
    std::memcpy(&r, &bits, sizeof(r));
    return r;
  }
};

} // namespace
} // namespace miniplaces_ext::cpu
