// The direct convolution kernel (direct_conv_kernel.h) compiled for AVX-512F by a target pragma
// (never -march); cpu_dispatch.cpp calls it only on CPUs that have AVX-512F. x86-64 builds only.
#if defined(__x86_64__)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,fma")

#include "cpu_dispatch.h"
#include "vec_avx512.h"
#include "direct_conv_kernel.h"

namespace miniplaces_ext::cpu {

at::Tensor direct_conv2d_nhwc_avx512(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const ConvGeometry& g) {
  return DirectConv<Avx512>::run(x_nhwc, weight, bias, g);
}

} // namespace miniplaces_ext::cpu

#pragma GCC pop_options

#endif // __x86_64__
