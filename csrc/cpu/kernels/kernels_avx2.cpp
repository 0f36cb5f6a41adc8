// Every CPU kernel template (direct_conv_kernel.h, winograd_kernel.h, fma_peak.h, max_pool_kernel.h; the direct kernel
// also on emulated bfloat16 pairs, vec_bf16_pairs.h) instantiated for
// AVX2 + FMA, compiled for it by a target pragma (never -march). the plan (plan.cpp) takes these only
// on CPUs that have AVX2 and FMA. x86-64 builds only.
#if defined(__x86_64__)

// Everything outside the target region is included first, so that the pragma applies to the
// kernels alone (inline library code compiled for AVX could otherwise leak to other callers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <utility>
#include <vector>
#include <immintrin.h>

#include "../plan.h"  // and conv.h, kernel_table.h: their inline functions compiled for the baseline
#include "../layout.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "vec_avx2.h"
#include "vec_bf16_pairs.h"
#include "direct_conv_kernel.h"
#include "winograd_kernel.h"
#include "weight_grad_kernel.h"
#include "fma_peak.h"
#include "max_pool_kernel.h"

namespace miniplaces_ext::cpu {

const IsaKernels& avx2_kernels() {
  static constexpr IsaKernels kKernels{&DirectConv<Avx2>::run, &WinogradConv<Avx2>::run,
                                        &DirectConv<EmulatedBf16Pairs<Avx2>, uint16_t>::run, &WeightGrad<Avx2>::run,
                                        &FmaPeak<Avx2>::gflops,
                                        &MaxPoolNhwc<float>::run, &MaxPoolNhwc<uint16_t>::run};
  return kKernels;
}

} // namespace miniplaces_ext::cpu

#pragma GCC pop_options

#endif // __x86_64__
