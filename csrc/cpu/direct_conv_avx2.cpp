// The direct convolution kernel (direct_conv_kernel.h) for AVX2 + FMA: 8 lanes,
// 6 pixels x 16 channels = 12 of the 16 ymm registers as accumulators.
// Compiled for AVX2 by a target pragma (never -march); cpu_dispatch.cpp calls
// it only on CPUs that have AVX2 and FMA. x86-64 builds only.
#if defined(__x86_64__)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "cpu_dispatch.h"
#include "direct_conv_kernel.h"

namespace miniplaces_ext::cpu {
namespace {

struct Avx2 {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kMaxPixels = 6;
  // Lane i is written/read when i < n.
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg broadcast(float v) { return _mm256_set1_ps(v); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load_partial(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static void store_partial(float* p, Reg v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
};

} // namespace

at::Tensor direct_conv2d_nhwc_avx2(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, const ConvGeometry& g) {
  return DirectConv<Avx2>::run(x_nhwc, weight, bias, g);
}

} // namespace miniplaces_ext::cpu

#pragma GCC pop_options

#endif // __x86_64__
