// The max_pool2d op: torch's F.max_pool2d (no indices), for optimize_for_inference's networks.
// Its CPU kernel (cpu/ops/max_pool.cpp) pools channels_last float32 / bfloat16 images in one
// vector pass; everywhere else, and for other layouts and dtypes, it is at::max_pool2d.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace miniplaces_ext {
namespace {

at::Tensor max_pool2d_composite(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return at::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(miniplaces_ext, CompositeExplicitAutograd, m) {
  m.impl("max_pool2d", &max_pool2d_composite);
}

} // namespace miniplaces_ext
