// Runs a plan's kernel (plan.h): takes the packed weight (packed_weights.h, from the inference
// cache where the plan keeps it), readies the input as the plan says, and calls the plan's entry.
#pragma once

#include "../conv.h"
#include "plan.h"

#include <ATen/core/Tensor.h>

namespace miniplaces_ext::cpu {

// Writes the convolution of plan p (forward or a grad_input phase; not gemm) of x [N, C, H, W]
// with weight [Cout, Cg, kh, kw] (+ bias, float32) into `out` [N, Cout, Ho, Wo] with any strides
// (a strided view of a larger tensor, say): float32, or bfloat16 for a bfloat16 unit (rounded
// once from float32 sums). x is float32 (p.input as_is or widened: the caller widens), or
// bfloat16 for a bfloat16 unit (converted to NHWC here, an odd channel count padded with a zero
// channel; lowered for a few-channel layer on tiles).
// The plan's epilogue past the bias (+ residual, ReLU) is applied in the kernel, on the float32
// sums: `residual` [N, Cout, Ho, Wo], any strides, in the output's dtype (float32, or bfloat16 for
// a bfloat16 unit), when p.epilogue.residual.
void run_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                     const c10::optional<at::Tensor>& bias, const at::Tensor& out,
                     const c10::optional<at::Tensor>& residual = c10::nullopt);

// The same into a new tensor in `out_format` (written in place by the kernel: no conversion
// afterwards), float32 or bfloat16 as above.
at::Tensor run_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, at::MemoryFormat out_format,
                           const c10::optional<at::Tensor>& residual = c10::nullopt);

// The weight gradient [Cout, Cin, kh, kw] of plan p (grad_weight, not gemm) from the input x
// [N, Cin, H, W] and grad_output dy [N, Cout, Ho, Wo], any strides: float32 (the caller rounds).
// Tiles read bfloat16 operands; the weight-gradient kernel float32 ones (the caller widens).
at::Tensor run_weight_grad(const ConvPlan& p, const at::Tensor& x, const at::Tensor& dy);

// The bfloat16 few-channel layer of plan p (input lowered): each output pixel's receptive field
// laid out as one zero-padded row, then the tile kernel computes the 1x1 convolution of those
// rows with the weight laid out alike (lowered_conv.cpp). Writes `out` as run_convolution.
void lowered_convolution(const ConvPlan& p, const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias, const OutputEpilogue& epilogue,
                         const at::Tensor& out);

// The kernels' view of plan p's epilogue past the bias, with `residual` where it has one.
OutputEpilogue output_epilogue(const ConvPlan& p, const c10::optional<at::Tensor>& residual);

} // namespace miniplaces_ext::cpu
