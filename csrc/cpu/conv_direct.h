// The direct (non-im2col) CPU convolution path, used where it is faster.
#pragma once

#include "../conv.h"

namespace miniplaces_ext::cpu {

// True when the direct kernel can run this problem on this CPU: float32,
// AVX-512 present, at least 16 output channels per group, and not disabled
// with MINIPLACES_CPU_ALGO=gemm (which forces the im2col + GEMM path).
bool direct_conv_supported(const ConvGeometry& g, at::ScalarType dtype);

// out [N, Ho, Wo, Cout] (NHWC, contiguous) of the convolution of the
// contiguous NHWC input x [N, H, W, C] with weight [Cout, Cg, kh, kw].
at::Tensor direct_conv2d_nhwc(const at::Tensor& x_nhwc, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const ConvGeometry& g);

} // namespace miniplaces_ext::cpu
