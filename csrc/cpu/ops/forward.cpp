// The forward pass on the CPU, plain (conv2d_forward) or with the inference epilogue
// (conv2d_fused: + residual, ReLU): the plan's kernel (direct, Winograd, or a bfloat16 unit), which
// applies the epilogue to its float32 sums before it writes them, else im2col + GEMM (1x1 layers
// on an NCHW input: a GEMM of the sampled pixels in NCHW), after which the epilogue is one pass.
#include "passes.h"

#include "../gemm_columns.h"
#include "../layout.h"
#include "../packed_weights.h"
#include "../plan.h"
#include "../run_plan.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>

namespace miniplaces_ext::cpu {
namespace {

// A 1x1 convolution without padding, one group, on an input whose output is
// NCHW stays in NCHW: out[n] [Cout, Ho*Wo] = W [Cout, Cin] @ x[n] [Cin, Ho*Wo]
// (+ bias) over the sampled pixels (a view when the stride is 1), with no
// layout conversion in or out.
at::Tensor pointwise_nchw(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          const ConvGeometry& g) {
  const at::Tensor x = input.slice(2, 0, g.in_h, g.stride_h)
                           .slice(3, 0, g.in_w, g.stride_w)
                           .reshape({g.batch, g.in_channels, g.out_pixels()});
  const at::Tensor w = weight.reshape({g.out_channels, g.in_channels}).expand({g.batch, g.out_channels, g.in_channels});
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  at::Tensor out3 = out.view({g.batch, g.out_channels, g.out_pixels()});
  if (bias.has_value() && bias->defined()) {
    at::baddbmm_out(out3, bias->view({1, g.out_channels, 1}), w, x);
  } else {
    at::bmm_out(out3, w, x);
  }
  return out;
}

// out = im2col(input) @ W^T (+ bias), channels-last, in chunks of whole images.
at::Tensor forward_by_gemm(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const ConvGeometry& g, int64_t column_bytes) {
  at::Tensor out = at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options());
  if (g.batch > 0) {
    const bool has_bias = bias.has_value() && bias->defined();
    const int64_t coutg = g.out_channels_per_group();
    const int64_t pixels = g.out_pixels();
    const int64_t chunk = images_per_chunk(g, input.element_size(), column_bytes);
    const at::Tensor w = weight_matrix(weight, g);
    const at::Tensor out_pixels = out.view({g.batch * pixels, g.out_channels});
    ColumnSource source(input, g, chunk * pixels);
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t count = std::min(chunk, g.batch - n0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const at::Tensor col = source.columns(n0 * pixels, count * pixels, grp);
        at::Tensor out_g = out_pixels.narrow(0, n0 * pixels, count * pixels).narrow(1, grp * coutg, coutg);
        const at::Tensor w_g = w.narrow(0, grp * coutg, coutg);
        if (has_bias) {
          at::addmm_out(out_g, bias->narrow(0, grp * coutg, coutg), col, w_g.t());
        } else {
          at::mm_out(out_g, col, w_g.t());
        }
      }
    }
  }
  return nchw_from_nhwc(out, conv_output_memory_format(input));
}

// The plan of a forward call, its input and residual checked.
ConvPlan plan_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  check_cpu(input);
  const bool has_residual = residual.has_value() && residual->defined();
  if (has_residual) {
    check_residual(*residual, input, g);
  }
  // Outside training the packed weight is kept for the next call (packed_weights.h).
  return plan_convolution(cpu_options(), g, input.scalar_type(), Pass::forward, weights_stay_packed(),
                          Epilogue{bias.has_value() && bias->defined(), has_residual, relu});
}

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The forward of plan `plan` (plan_forward's for these arguments).
at::Tensor forward_planned(const ConvPlan& plan, const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                           bool relu, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups) {
  const ConvGeometry& g = plan.g;
  const bool has_residual = plan.epilogue.residual;
  const at::ScalarType dtype = input.scalar_type();
  if (plan.algo != Algo::gemm) {
    // The bfloat16 units read bfloat16; every other kernel float32 (a bfloat16 or float16 input
    // is widened as it is laid out NHWC, and so is a residual: the kernel adds it to its float32
    // sums and the result is rounded once).
    const at::Tensor x = plan.input == InputStrategy::widened ? widened_nhwc(input) : input;
    const bool widened_residual = has_residual && plan.unit == Bf16Kernel::none && dtype != at::kFloat;
    const c10::optional<at::Tensor> kernel_residual =
        widened_residual ? c10::optional<at::Tensor>(residual->to(at::kFloat)) : residual;
    return run_convolution(plan, x, weight, float_or_none(bias), conv_output_memory_format(input), kernel_residual)
        .to(dtype);
  }
  if (widened_to_float(dtype)) {  // in float32, the epilogue included, then one rounding
    return forward(input.to(at::kFloat), weight.to(at::kFloat), float_or_none(bias), float_or_none(residual), relu,
                   stride, padding, dilation, groups)
        .to(dtype);
  }
  at::Tensor out;
  if (g.samples_pixels() && g.groups == 1 && conv_output_memory_format(input) == at::MemoryFormat::Contiguous) {
    out = pointwise_nchw(input, weight, bias, g);
  } else {
    out = forward_by_gemm(input, weight, bias, g, plan.options.column_bytes);
  }
  if (has_residual) {  // the GEMM paths' epilogue: passes over the output
    out.add_(*residual);
  }
  if (relu) {
    out.relu_();
  }
  return out;
}

// The forward of both ops (below): the plain convolution when there is no residual and no ReLU.
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward_planned(plan_forward(input, weight, bias, residual, relu, stride, padding, dilation, groups), input,
                         weight, bias, residual, relu, stride, padding, dilation, groups);
}

} // namespace

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward(input, weight, bias, c10::nullopt, false, stride, padding, dilation, groups);
}

at::Tensor conv2d_fused(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward(input, weight, bias, residual, relu, stride, padding, dilation, groups);
}

void conv2d_fused_(at::Tensor& residual, const at::Tensor& input, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias, bool relu, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups) {
  const ConvPlan plan = plan_forward(input, weight, bias, residual, relu, stride, padding, dilation, groups);
  // The bfloat16 units finish each output element from its float32 sum and its residual element
  // together (a block at a time, or a row through a buffer), so they may write over the residual;
  // the float32 kernels store their sums first and add the residual after, and the GEMM paths add
  // it in a pass of their own: those compute aside, then copy.
  const bool over_residual = plan.algo != Algo::gemm && plan.unit != Bf16Kernel::none &&
      at::get_overlap_status(input, residual) == at::MemOverlapStatus::No &&
      at::has_internal_overlap(residual) == at::MemOverlap::No;
  if (!over_residual) {
    residual.copy_(forward_planned(plan, input, weight, bias, residual, relu, stride, padding, dilation, groups));
    return;
  }
  run_convolution(plan, input, weight, float_or_none(bias), residual, residual);
}

} // namespace miniplaces_ext::cpu
