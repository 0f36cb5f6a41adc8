// The CPU passes of a convolution (one file each: forward.cpp, grad_input.cpp, grad_weight.cpp,
// grad_bias.cpp; backward.cpp runs the three backward passes, register.cpp registers the ops).
// Each pass makes its plan (plan.h) once and executes it: a kernel (run_plan.h) or im2col + GEMM
// (gemm_columns.h).
//
// bfloat16 and float16 are computed in float32 unless a bfloat16 unit takes them: the operands are
// widened (the input as it is laid out for the kernel, the weight as it is packed), sums are
// accumulated in float32 and each result is rounded once to its dtype.
#pragma once

#include "../../conv.h"
#include "../cpu_options.h"
#include "../layout.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <tuple>

namespace miniplaces_ext::cpu {

// The ops' CPU kernels (schemas in csrc/conv.cpp).
at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
at::Tensor conv2d_fused(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& residual, bool relu, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
void conv2d_fused_(at::Tensor& residual, const at::Tensor& input, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias, bool relu, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                               const at::Tensor& weight, at::IntArrayRef stride,
                                                               at::IntArrayRef padding, at::IntArrayRef dilation,
                                                               int64_t groups, std::array<bool, 3> output_mask);

// grad_output as the backward passes read it, each form made on first use: as given (the bfloat16
// tile passes read it so); in the computation's dtype (float32, laid out NHWC, for a widened
// bfloat16/float16 call; else as given); and that as NHWC pixel rows [N*Ho*Wo, Cout] (a view when
// it is channels_last) for the GEMM paths.
class GradOutput {
 public:
  GradOutput(const at::Tensor& given, bool widen) : given_(given), widen_(widen) {}
  const at::Tensor& given() const { return given_; }
  const at::Tensor& computed();
  const at::Tensor& pixels();

 private:
  const at::Tensor& given_;
  bool widen_;
  std::optional<at::Tensor> computed_, pixels_;
};

// grad_input by the direct / Winograd kernels, one forward convolution of grad_output per stride
// phase, or nullopt where a phase's plan is im2col + GEMM. With `bf16_tiles`, dy and weight are
// bfloat16 and every phase must run on the bfloat16 tile unit (else nullopt): dx is then bfloat16,
// each element rounded once from its phase's float32 sums.
std::optional<at::Tensor> grad_input_by_kernels(const CpuOptions& options, const at::Tensor& dy,
                                                const at::Tensor& weight, const ConvGeometry& g,
                                                at::MemoryFormat out_format, bool bf16_tiles = false);

// bfloat16 grad_input of a few-channel layer (lowered_applies) on the tile unit, where its plan
// takes the tiles: dcol = dy @ W by receptive-field value and its adjoint of im2col per image
// (grad_input_tiles.h); nullopt elsewhere. dx is bfloat16, each element rounded once.
std::optional<at::Tensor> grad_input_lowered_on_tiles(const CpuOptions& options, const at::Tensor& dy,
                                                      const at::Tensor& weight, const ConvGeometry& g,
                                                      at::MemoryFormat out_format);

// grad_input by dcol = dy @ W and col2im, in chunks of whole images (dy in the computation's dtype).
at::Tensor grad_input_by_gemm(GradOutput& dy, const at::Tensor& weight, const ConvGeometry& g,
                              const at::TensorOptions& options, at::MemoryFormat out_format, int64_t column_bytes);

// The weight gradient: on tiles from the bfloat16 input and grad_output, else from the input and
// grad_output in the computation's dtype; in that dtype (float32 for tiles), rounded by the caller.
at::Tensor grad_weight(const CpuOptions& options, const at::Tensor& input, GradOutput& dy, const ConvGeometry& g,
                       bool widen);

// The bias gradient: sums of grad_output over images and pixels, in the computation's dtype
// (op-math accumulation).
at::Tensor grad_bias(GradOutput& dy, const ConvGeometry& g);

// Whether `dtype` is computed by the float32 kernels (bfloat16, float16).
inline bool widened_to_float(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf;
}

// A bfloat16 / float16 [N, C, H, W] tensor in float32, laid out channels_last in the same pass
// (the widened kernels' input, grad_output and weight-gradient operand).
inline at::Tensor widened_nhwc(const at::Tensor& t) {
  return nhwc_pixels(t, 1, 1, at::kFloat).permute({0, 3, 1, 2});
}

// The tensor in float32 (itself when it is float32), or none.
inline c10::optional<at::Tensor> float_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? c10::optional<at::Tensor>(t->to(at::kFloat)) : c10::nullopt;
}

inline void check_cpu(const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "the CPU conv kernel got a tensor on ", input.device());
}

} // namespace miniplaces_ext::cpu
