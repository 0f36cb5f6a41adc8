// The forward pass on the CPU: the plan's kernel (direct, Winograd, or a bfloat16 unit), else
// im2col + GEMM (1x1 layers on an NCHW input: a GEMM of the sampled pixels in NCHW).
#include "passes.h"

#include "../gemm_columns.h"
#include "../layout.h"
#include "../packed_weights.h"
#include "../plan.h"
#include "../run_plan.h"

#include <ATen/ATen.h>

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

} // namespace

at::Tensor conv2d_forward(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  check_cpu(input);
  const at::ScalarType dtype = input.scalar_type();
  // Outside training the packed weight is kept for the next call (packed_weights.h).
  const ConvPlan plan = plan_convolution(cpu_options(), g, dtype, Pass::forward, weights_stay_packed(),
                                         bias.has_value() && bias->defined());
  if (plan.algo != Algo::gemm) {
    // The bfloat16 units read bfloat16; every other kernel float32 (a bfloat16 or float16 input
    // is widened as it is laid out NHWC).
    const at::Tensor x = plan.input == InputStrategy::widened
        ? nhwc_pixels(input, 1, 1, at::kFloat).permute({0, 3, 1, 2})
        : input;
    return run_convolution(plan, x, weight, float_or_none(bias), conv_output_memory_format(input)).to(dtype);
  }
  if (widened_to_float(dtype)) {
    return conv2d_forward(input.to(at::kFloat), weight.to(at::kFloat), float_or_none(bias), stride, padding, dilation,
                          groups)
        .to(dtype);
  }
  if (g.samples_pixels() && g.groups == 1 && conv_output_memory_format(input) == at::MemoryFormat::Contiguous) {
    return pointwise_nchw(input, weight, bias, g);
  }
  return forward_by_gemm(input, weight, bias, g, plan.options.column_bytes);
}

} // namespace miniplaces_ext::cpu
