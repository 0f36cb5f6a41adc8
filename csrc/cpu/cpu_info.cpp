// CPUID and the OS's tile-state permission, each read once (see cpu_info.h).
#include "cpu_info.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace miniplaces_ext::cpu {
namespace {

constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512"};

Isa read_cpuid() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    return Isa::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::avx2;
  }
#endif
  return Isa::portable;
}

bool read_avx512_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // With AVX512DQ and AVX512BW, which every AVX512-BF16 CPU has (the finish of a bfloat16 block
  // classifies and packs with them: vec_avx512_bf16.h).
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

// AMX-TILE and AMX-BF16, and the tile state granted: Linux hands it out per process on request.
bool read_amx_bf16() {
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // The tile kernel finishes its blocks with AVX512-BF16, which every AMX-BF16 CPU has.
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") || !read_avx512_bf16()) {
    return false;
  }
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, the XTILEDATA state
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

} // namespace

const char* isa_name(Isa isa) {
  return kIsaNames[static_cast<int>(isa)];
}

Isa detected_isa() {
  static const Isa isa = read_cpuid();
  return isa;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i) {
    out.push_back(static_cast<Isa>(i));
  }
  return out;
}

bool has_avx512_bf16() {
  static const bool has = read_avx512_bf16();
  return has;
}

bool has_amx_bf16() {
  static const bool has = read_amx_bf16();
  return has;
}

} // namespace miniplaces_ext::cpu
