// The direct convolution kernel (direct_conv_kernel.h) for AVX-512F: 16 lanes,
// 12 pixels x 32 channels = 24 of the 32 zmm registers as accumulators.
// Compiled for AVX-512 by a target pragma (never -march); cpu_dispatch.cpp
// calls it only on CPUs that have AVX-512F. x86-64 builds only.
#if defined(__x86_64__)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,fma")

#include "cpu_dispatch.h"
#include "direct_conv_kernel.h"

namespace miniplaces_ext::cpu {
namespace {

struct Avx512 {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kMaxPixels = 12;
  static __mmask16 mask(int n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1); }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg broadcast(float v) { return _mm512_set1_ps(v); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load_partial(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static void store_partial(float* p, Reg v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
};

} // namespace

at::Tensor direct_conv2d_nhwc_avx512(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const ConvGeometry& g) {
  return DirectConv<Avx512>::run(x_nhwc, weight, bias, g);
}

} // namespace miniplaces_ext::cpu

#pragma GCC pop_options

#endif // __x86_64__
