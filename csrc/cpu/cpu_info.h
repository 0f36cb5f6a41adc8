// What this CPU (and its OS) can run, read from CPUID once: the instruction-set levels of our
// kernels and the bfloat16 instructions. Nothing here is a choice: cpu_options.h holds those.
#pragma once

#include <vector>

namespace miniplaces_ext::cpu {

// Instruction-set levels, lowest first: each one includes the ones before it.
enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

// "portable", "avx2" or "avx512".
const char* isa_name(Isa isa);

// The highest level this CPU (and its OS) supports; CPUID is read once.
Isa detected_isa();

// Every level up to detected_isa(), lowest first.
std::vector<Isa> supported_isas();

// True when the CPU has AVX512-BF16 (vdpbf16ps); read from CPUID once.
bool has_avx512_bf16();

// True when the CPU has AMX-TILE and AMX-BF16 and the OS granted this process the tile state
// (Linux: arch_prctl ARCH_REQ_XCOMP_PERM); asked once.
bool has_amx_bf16();

} // namespace miniplaces_ext::cpu
