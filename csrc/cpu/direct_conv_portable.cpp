// The direct convolution kernel (direct_conv_kernel.h) for any CPU: GCC/Clang
// vector extensions of 4 floats, which compile to the baseline SIMD of the
// target (SSE2 on x86-64, NEON on aarch64) with no target-specific code.
#include "cpu_dispatch.h"
#include "direct_conv_kernel.h"

#include <cstring>

namespace miniplaces_ext::cpu {
namespace {

struct Portable {
  typedef float Reg __attribute__((vector_size(16)));
  static constexpr int kLanes = 4;
  static constexpr int kMaxPixels = 6;
  static Reg zero() { return Reg{}; }
  static Reg broadcast(float v) { return Reg{} + v; }
  static Reg load(const float* p) {
    Reg r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static Reg load_partial(const float* p, int n) {
    Reg r{};
    for (int i = 0; i < n; ++i) {
      r[i] = p[i];
    }
    return r;
  }
  static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static void store_partial(float* p, Reg v, int n) {
    for (int i = 0; i < n; ++i) {
      p[i] = v[i];
    }
  }
};

} // namespace

at::Tensor direct_conv2d_nhwc_portable(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, const ConvGeometry& g) {
  return DirectConv<Portable>::run(x_nhwc, weight, bias, g);
}

} // namespace miniplaces_ext::cpu
