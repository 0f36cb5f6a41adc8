// The direct kernel on bfloat16 pairs with AVX512-BF16's vdpbf16ps (vec_avx512_bf16.h), compiled
// for it by a target pragma (never -march). the plan (plan.cpp) takes it only on CPUs that have
// AVX512-BF16. x86-64 builds only.
#if defined(__x86_64__)

// Everything outside the target region is included first, so that the pragma applies to the
// kernel alone (inline library code compiled for AVX-512 could otherwise leak to other callers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#include <immintrin.h>

#include "../plan.h"  // and conv.h, kernel_table.h: their inline functions compiled for the baseline
#include "../layout.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bf16,avx512bw,avx512dq,fma")

#include "vec_avx512.h"
#include "vec_avx512_bf16.h"
#include "direct_conv_kernel.h"

namespace miniplaces_ext::cpu {

IsaKernels::NhwcConv avx512_bf16_pairs_direct() {
  return &DirectConv<Avx512Bf16, uint16_t>::run;
}

} // namespace miniplaces_ext::cpu

#pragma GCC pop_options

#endif // __x86_64__
