// The backward op on the CPU: grad_input, grad_weight and grad_bias under an output mask, each
// computed only when asked, from one reading of the options.
#include "passes.h"

#include "../layout.h"

#include <ATen/ATen.h>

#include <utility>

namespace miniplaces_ext::cpu {

const at::Tensor& GradOutput::computed() {
  if (!widen_) {
    return given_;
  }
  if (!computed_) {
    computed_ = widened_nhwc(given_);
  }
  return *computed_;
}

const at::Tensor& GradOutput::pixels() {
  if (!pixels_) {
    pixels_ = nhwc_pixels(computed()).reshape({-1, given_.size(1)});
  }
  return *pixels_;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& weight,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    std::array<bool, 3> output_mask) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, c10::nullopt, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, g);
  check_cpu(input);
  const CpuOptions options = cpu_options();
  const at::MemoryFormat format = conv_output_memory_format(input);
  // bfloat16 and float16 are computed in float32 (widened_to_float): grad_output and the input
  // are widened as they are laid out NHWC, the weight where a pass reads it; each gradient is
  // rounded once.
  const bool widen = widened_to_float(input.scalar_type());
  at::Tensor grad_input, grad_weight_out, grad_bias_out;
  auto [need_input, need_weight, need_bias] = output_mask;
  // bfloat16 grad_input on the tile unit (AMX, or MINIPLACES_CPU_BF16=tiles): a few-channel
  // layer as the adjoint of its lowered forward pass, else as forward convolutions of bfloat16
  // grad_output per stride phase (where every phase takes the tiles).
  if (need_input && input.scalar_type() == at::kBFloat16) {
    auto dx = grad_input_lowered_on_tiles(options, grad_output, weight, g, format);
    if (!dx) {
      dx = grad_input_by_kernels(options, grad_output, weight, g, format, /*bf16_tiles=*/true);
    }
    if (dx) {
      grad_input = std::move(*dx);
      need_input = false;
    }
  }
  // grad_output [N, Cout, Ho, Wo] in the computation's dtype, in the layout it came in (the
  // kernels lay out its rows as they read them), widened and as pixel rows only for a pass that
  // reads it so.
  GradOutput dy(grad_output, widen);
  // The weight in the computation's dtype, widened only for the grad_input paths that read it so
  // (not when the tile unit took grad_input above).
  const at::Tensor w = need_input && widen ? weight.to(at::kFloat) : weight;
  if (need_input) {
    if (auto dx = grad_input_by_kernels(options, dy.computed(), w, g, format)) {
      grad_input = std::move(*dx);
      need_input = false;
    }
  }
  if (need_bias) {
    grad_bias_out = grad_bias(dy, g);
  }
  if (need_weight) {
    grad_weight_out = grad_weight(options, input, dy, g, widen);
  }
  if (need_input) {
    grad_input = grad_input_by_gemm(dy, w, g, dy.computed().options(), format, options.column_bytes);
  }
  const auto rounded = [](const at::Tensor& t, at::ScalarType dtype) { return t.defined() ? t.to(dtype) : t; };
  return std::make_tuple(rounded(grad_input, input.scalar_type()), rounded(grad_weight_out, weight.scalar_type()),
                         rounded(grad_bias_out, grad_output.scalar_type()));
}

} // namespace miniplaces_ext::cpu
