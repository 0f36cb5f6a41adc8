// conv2d_fused: a convolution with its inference epilogue, the op that
// miniplaces_ext.optimize_for_inference builds networks from:
//
//   out = relu?(conv2d(input, weight, bias) + residual?)
//
// with a BatchNorm already folded into weight and bias by the caller. On the CPU
// the kernels apply the epilogue to their float32 sums before they write them
// (csrc/cpu/ops/forward.cpp: one rounding, no pass over memory afterwards). This
// composite serves the other devices (CUDA): conv2d_forward through the
// dispatcher, then the residual add and ReLU as in-place passes. No autograd
// (inference only).
#include "conv.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace miniplaces_ext {
namespace {

at::Tensor conv2d_fused(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static auto conv = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("miniplaces_ext::conv2d_forward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  if (residual.has_value() && residual->defined()) {
    check_residual(*residual, input, make_conv2d_geometry(input, weight, bias, stride, padding, dilation, groups));
  }
  at::Tensor out = conv.call(input, weight, bias, stride, padding, dilation, groups);
  if (residual.has_value() && residual->defined()) {
    out.add_(*residual);
  }
  if (relu) {
    out.relu_();
  }
  return out;
}

} // namespace

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def(
      "conv2d_fused(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, bool relu, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(miniplaces_ext, CompositeExplicitAutograd, m) {
  m.impl("conv2d_fused", &conv2d_fused);
}

} // namespace miniplaces_ext
