// Op schemas and the conv1d front door (the argument checks and output size: conv_geometry.cpp).
//
// The ops live in the `miniplaces_ext` namespace. conv2d_forward/backward have
// device kernels (csrc/cpu, csrc/cuda); conv1d_forward/backward are composite:
// they view the 1-D problem as a 2-D one of height 1 and call the conv2d ops
// through the dispatcher, so one implementation serves both.
#include "conv.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace miniplaces_ext {
namespace {

// Expands the 1-D arguments of conv1d to the 2-D arguments of a height-1 conv2d.
std::array<int64_t, 2> as_2d(at::IntArrayRef values, const char* name, int64_t height_value) {
  TORCH_CHECK(values.size() == 1, "conv1d: ", name, " must have 1 element, got ", values.size());
  return {height_value, values[0]};
}

void check_conv1d_ranks(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.dim() == 3, "conv1d expects a 3-D input (N, C, L), got a ", input.dim(), "-D tensor of shape ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 3, "conv1d expects a 3-D weight (out_channels, in_channels/groups, k), got a ",
              weight.dim(), "-D tensor of shape ", weight.sizes());
}

at::Tensor conv1d_forward(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups) {
  check_conv1d_ranks(input, weight);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("miniplaces_ext::conv2d_forward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  return op
      .call(input.unsqueeze(2), weight.unsqueeze(2), bias, as_2d(stride, "stride", 1), as_2d(padding, "padding", 0),
            as_2d(dilation, "dilation", 1), groups)
      .squeeze(2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv1d_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& weight,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    std::array<bool, 3> output_mask) {
  check_conv1d_ranks(input, weight);
  TORCH_CHECK(grad_output.dim() == 3, "conv1d: grad_output must be 3-D, got shape ", grad_output.sizes());
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("miniplaces_ext::conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                           at::IntArrayRef, int64_t, std::array<bool, 3>)>();
  auto [grad_input, grad_weight, grad_bias] =
      op.call(grad_output.unsqueeze(2), input.unsqueeze(2), weight.unsqueeze(2), as_2d(stride, "stride", 1),
              as_2d(padding, "padding", 0), as_2d(dilation, "dilation", 1), groups, output_mask);
  return {grad_input.defined() ? grad_input.squeeze(2) : grad_input,
          grad_weight.defined() ? grad_weight.squeeze(2) : grad_weight, grad_bias};
}

// conv2d_fused_ on any device: conv2d_fused computed aside, then copied over the residual (the
// CPU kernel writes over it directly where its kernel allows).
void conv2d_fused_(at::Tensor& residual, const at::Tensor& input, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias, bool relu, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("miniplaces_ext::conv2d_fused", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         const c10::optional<at::Tensor>&, bool, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, int64_t)>();
  residual.copy_(op.call(input, weight, bias, residual, relu, stride, padding, dilation, groups));
}

} // namespace

TORCH_LIBRARY(miniplaces_ext, m) {
  m.def(
      "conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The inference op optimize_for_inference builds networks from: relu?(conv2d(input, weight, bias)
  // + residual?), a BatchNorm already folded into weight and bias; the device kernels apply the
  // epilogue to their float32 (op-math) sums and round once (csrc/cpu/ops/forward.cpp,
  // csrc/cuda/conv_problems.cuh's ForwardProblem::store). No autograd: inference only.
  m.def(
      "conv2d_fused(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, bool relu, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  // The same with the result written over the residual (a ResNet block's skip connection, dead
  // after the add): no new output buffer, and the add reads and writes the same lines. Returns
  // nothing (functionalization, under torch.compile, takes no custom op whose output aliases an input).
  m.def(
      "conv2d_fused_(Tensor(a!) residual, Tensor input, Tensor weight, Tensor? bias, bool relu, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> ()");
  m.def(
      "conv1d_forward(Tensor input, Tensor weight, Tensor? bias, int[1] stride, int[1] padding, "
      "int[1] dilation, int groups) -> Tensor");
  m.def(
      "conv1d_backward(Tensor grad_output, Tensor input, Tensor weight, int[1] stride, int[1] padding, "
      "int[1] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(miniplaces_ext, CompositeExplicitAutograd, m) {
  m.impl("conv2d_fused_", &conv2d_fused_);
  m.impl("conv1d_forward", &conv1d_forward);
  m.impl("conv1d_backward", &conv1d_backward);
}

} // namespace miniplaces_ext
