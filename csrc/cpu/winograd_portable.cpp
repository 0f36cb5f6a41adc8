// The Winograd F(4x4, 3x3) kernel (winograd_kernel.h) for any CPU (vec_portable.h: GCC/Clang
// vector extensions, no target-specific code).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "cpu_dispatch.h"
#include "vec_portable.h"
#include "winograd_kernel.h"

namespace miniplaces_ext::cpu {

at::Tensor winograd_conv2d_nhwc_portable(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias, const ConvGeometry& g) {
  return WinogradConv<Portable>::run(x_nhwc, weight, bias, g);
}

} // namespace miniplaces_ext::cpu
