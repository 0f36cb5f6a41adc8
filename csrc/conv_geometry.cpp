// The geometry of a conv2d call (output size from input, kernel, stride, padding, dilation) and
// the argument checks every device's kernels rely on. Apart from the op registrations
// (conv.cpp) so that the CUDA-on-CPU test harness compiles it too.
#include "conv.h"

#include <ATen/ATen.h>

namespace miniplaces_ext {
namespace {

void check_pair(at::IntArrayRef values, const char* name, int64_t min_value) {
  TORCH_CHECK(values.size() == 2, name, " must have 2 elements (height, width), got ", values.size());
  for (int64_t v : values) {
    TORCH_CHECK(v >= min_value, min_value > 0 ? "non-positive " : "negative ", name, " is not supported, got ", values);
  }
}

} // namespace

at::MemoryFormat conv_output_memory_format(const at::Tensor& input) {
  const bool channels_last = input.dim() == 4 && !input.is_contiguous() &&
      input.is_contiguous(at::MemoryFormat::ChannelsLast);
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

ConvGeometry make_conv2d_geometry(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups) {
  TORCH_CHECK(input.dim() == 4, "conv2d expects a 4-D input (N, C, H, W), got a ", input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "conv2d expects a 4-D weight (out_channels, in_channels/groups, kH, kW), got a ",
              weight.dim(), "-D tensor of shape ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "conv2d supports floating-point inputs only, got ", input.scalar_type());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "input and weight must have the same dtype, got ",
              input.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(input.device() == weight.device(), "input and weight must be on the same device, got ",
              input.device(), " and ", weight.device());
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(groups > 0, "non-positive groups is not supported, got ", groups);

  ConvGeometry g{};
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.groups = groups;

  TORCH_CHECK(g.out_channels > 0, "weight has zero output channels (shape ", weight.sizes(), ")");
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, "weight has an empty kernel (shape ", weight.sizes(), ")");
  TORCH_CHECK(weight.size(1) > 0 && g.in_channels > 0, "zero input channels (input ", input.sizes(), ", weight ",
              weight.sizes(), "): a convolution needs at least one input channel per group");
  TORCH_CHECK(g.in_channels % groups == 0, "input channels (", g.in_channels, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(g.out_channels % groups == 0, "output channels (", g.out_channels, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == g.in_channels, "given groups=", groups, ", weight of shape ", weight.sizes(),
              " expects ", weight.size(1) * groups, " input channels, but the input of shape ", input.sizes(), " has ",
              g.in_channels);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, "bias must have shape [", g.out_channels,
                "] (one value per output channel), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "bias must have the input's dtype ", input.scalar_type(),
                ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == input.device(), "bias must be on the input's device ", input.device(), ", got ",
                bias->device());
  }

  const int64_t padded_h = g.in_h + 2 * g.pad_h;
  const int64_t padded_w = g.in_w + 2 * g.pad_w;
  const int64_t extent_h = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t extent_w = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK(extent_h <= padded_h && extent_w <= padded_w, "padded input size per channel (", padded_h, " x ", padded_w,
              ") is smaller than the dilated kernel size (", extent_h, " x ", extent_w,
              "); the kernel can't be larger than the padded input");
  g.out_h = (padded_h - extent_h) / g.stride_h + 1;
  g.out_w = (padded_w - extent_w) / g.stride_w + 1;
  return g;
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const ConvGeometry& g) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch && grad_output.size(1) == g.out_channels &&
                  grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
              "grad_output must have the forward output's shape [", g.batch, ", ", g.out_channels, ", ", g.out_h, ", ",
              g.out_w, "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "grad_output must have the input's dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == input.device(), "grad_output must be on the input's device ", input.device(),
              ", got ", grad_output.device());
}

void check_residual(const at::Tensor& residual, const at::Tensor& input, const ConvGeometry& g) {
  TORCH_CHECK(residual.sizes() == at::IntArrayRef({g.batch, g.out_channels, g.out_h, g.out_w}),
              "conv2d_fused: the residual must have the output's shape [", g.batch, ", ", g.out_channels, ", ", g.out_h,
              ", ", g.out_w, "], got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == input.scalar_type() && residual.device() == input.device(),
              "conv2d_fused: the residual must be ", input.scalar_type(), " on ", input.device(), ", got ",
              residual.scalar_type(), " on ", residual.device());
}

} // namespace miniplaces_ext
