// The switches of the CPU kernels, read once (see cpu_options.cpp for how they are set).
//
//   isa           portable | avx2 | avx512: lowers the instruction-set level, never raises it (a level
//                 the CPU lacks is an error). Default: detected_isa().
//   algo          auto | direct | gemm | winograd: forces an algorithm where it applies.
//   bf16          auto | pairs | tiles | widen: how bfloat16 layers on the direct kernel multiply.
//                 auto takes AMX tile products (TDPBF16PS) where the CPU has AMX-BF16, else
//                 bfloat16 pair products (VDPBF16PS) where it has AVX512-BF16, both only at the
//                 avx512 level, else widens to float32; pairs and tiles take that kernel everywhere
//                 (emulated in plain arithmetic where the CPU lacks the instructions: how tests run
//                 them on any CPU); widen always widens.
//   column_bytes  the cap on one im2col / col2im chunk of the GEMM path (default 4 MiB).
//
// The environment (MINIPLACES_CPU_ISA, MINIPLACES_CPU_ALGO, MINIPLACES_CPU_BF16,
// MINIPLACES_CPU_COLUMN_BYTES) gives the defaults, read at the first call; after that only
// set_cpu_options changes them (Python: miniplaces_ext.set_cpu_options). No call reads the
// environment: getenv beside a concurrent setenv is undefined behaviour, and torch's threads call us.
#pragma once

#include "cpu_info.h"

#include <cstdint>

namespace miniplaces_ext::cpu {

// The algorithms a CPU convolution can run. `automatic` is only a request.
enum class Algo : int { automatic = 0, direct = 1, gemm = 2, winograd = 3 };

// How bfloat16 direct convolutions multiply (see above).
enum class Bf16Mode : int { automatic = 0, pairs = 1, widen = 2, tiles = 3 };

struct CpuOptions {
  Isa isa;
  Algo algo;
  Bf16Mode bf16;
  int64_t column_bytes;
};

// The options in force: a copy, consistent as a whole. The first call reads the environment
// (and raises, with the variable named, where a value is invalid).
CpuOptions cpu_options();

// Makes `options` the ones in force for every later call (checked: a level this CPU lacks, or a
// non-positive column_bytes, is an error).
void set_cpu_options(const CpuOptions& options);

const char* algo_name(Algo algo);
const char* bf16_mode_name(Bf16Mode mode);

} // namespace miniplaces_ext::cpu
