// Shared declarations of the miniplaces_ext convolution ops.
//
// Every op works on 4-D tensors (N, C, H, W); conv1d is routed here as a 2-D
// convolution with height 1. Kernels only ever see zero padding: the Python
// front end pads non-zero padding modes and asymmetric 'same' padding itself.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstdint>
#include <tuple>

namespace miniplaces_ext {

// Every size a kernel needs, derived and validated once from the op arguments;
// the one description of a convolution that every CPU and CUDA kernel reads
// (its methods are host and device code).
struct ConvGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups;

  C10_HOST_DEVICE int64_t in_channels_per_group() const { return in_channels / groups; }
  C10_HOST_DEVICE int64_t out_channels_per_group() const { return out_channels / groups; }
  C10_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  // Length of one im2col row: kernel_h * kernel_w * in_channels_per_group.
  C10_HOST_DEVICE int64_t patch_size() const { return taps() * in_channels_per_group(); }
  C10_HOST_DEVICE int64_t in_pixels() const { return in_h * in_w; }
  C10_HOST_DEVICE int64_t out_pixels() const { return out_h * out_w; }
  // True when every output pixel is one input pixel (1x1, no padding, any
  // stride): the convolution is a matrix product over the sampled pixels.
  C10_HOST_DEVICE bool samples_pixels() const {
    return kernel_h == 1 && kernel_w == 1 && pad_h == 0 && pad_w == 0;
  }
  // True when the convolution is a plain matrix product over all pixels.
  C10_HOST_DEVICE bool is_pointwise() const {
    return samples_pixels() && stride_h == 1 && stride_w == 1;
  }
};

// Element strides of a 4-D tensor's dimensions (N, C, H, W), or (Cout, Cin, kh,
// kw) of a weight: how every CPU and CUDA kernel addresses a tensor in any
// memory layout (NCHW, NHWC, ...).
struct Strides4 {
  int64_t n, c, h, w;
  C10_HOST_DEVICE int64_t at(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

// The strides of a 4-D tensor.
inline Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Validates the arguments of a 2-D convolution (ranks, dtypes, devices,
// channel/group consistency, stride/dilation/padding ranges, kernel fitting in
// the padded input) with messages a user understands, and returns the geometry.
ConvGeometry make_conv2d_geometry(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups);

// Checks the gradient passed to a backward op against the forward geometry.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const ConvGeometry& g);

// Checks conv2d_fused's residual: the output's shape [N, Cout, Ho, Wo], the input's dtype and
// device (any strides).
void check_residual(const at::Tensor& residual, const at::Tensor& input, const ConvGeometry& g);

// Memory format of the output (and of grad_input): channels_last when the
// input is channels_last and not also plain contiguous, else contiguous. The
// Python fake kernels apply the same rule.
at::MemoryFormat conv_output_memory_format(const at::Tensor& input);

namespace cpu {
at::Tensor conv2d_forward(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups);

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& weight,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    std::array<bool, 3> output_mask);
} // namespace cpu

} // namespace miniplaces_ext
