// Ops that say what the CPU side found and would do: cpu_capabilities, cpu_conv_algorithm,
// cpu_conv_plan (a ConvPlan, printed), cpu_fma_peak_gflops.
#include "plan.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

namespace miniplaces_ext::cpu {
namespace {

// "detected=avx2 chosen=avx2 algo=auto bf16=auto avx512_bf16=no amx_bf16=no supported=portable,avx2": parsed by
// miniplaces_ext.cpu_capabilities(). Raises if a switch is invalid.
std::string cpu_capabilities() {
  std::string supported;
  for (Isa isa : supported_isas()) {
    supported += (supported.empty() ? "" : ",") + std::string(isa_name(isa));
  }
  const CpuOptions o = cpu_options();
  return std::string("detected=") + isa_name(detected_isa()) + " chosen=" + isa_name(o.isa) +
      " algo=" + algo_name(o.algo) + " bf16=" + bf16_mode_name(o.bf16) + " avx512_bf16=" + (has_avx512_bf16() ? "yes" : "no") +
      " amx_bf16=" + (has_amx_bf16() ? "yes" : "no") + " supported=" + supported;
}

// The plan of one pass of this convolution on the CPU. Phase "forward": an evaluation forward,
// whose packed weight is kept (weights_stay_packed); "training_forward": a forward that autograd
// records, which packs per call; "grad_weight": the weight gradient.
ConvPlan plan_of(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                 at::IntArrayRef dilation, int64_t groups, c10::string_view phase) {
  const ConvGeometry g = make_conv2d_geometry(input, weight, c10::nullopt, stride, padding, dilation, groups);
  TORCH_CHECK(phase == "forward" || phase == "training_forward" || phase == "grad_weight",
              "cpu_conv_algorithm: phase must be 'forward', 'training_forward' or 'grad_weight', got '", phase, "'");
  const CpuOptions options = cpu_options();
  if (phase == "grad_weight") {
    return plan_weight_grad(options, g, input.scalar_type());
  }
  return plan_convolution(options, g, input.scalar_type(), Pass::forward, phase == "forward", Epilogue{});
}

// The plan's algorithm: direct, gemm or winograd; "direct-bf16" for the direct kernel on bfloat16
// pairs, "direct-bf16-tiles" on tiles; for phase "grad_weight" "direct-bf16-tiles"
// (weight_grad_tiles.h), "direct" (the weight-gradient kernel) or "gemm".
std::string cpu_conv_algorithm(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view phase) {
  return plan_of(input, weight, stride, padding, dilation, groups, phase).algorithm_name();
}

// Every decision of the plan, one line (ConvPlan::describe).
std::string cpu_conv_plan(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view phase) {
  return plan_of(input, weight, stride, padding, dilation, groups, phase).describe();
}

// GFLOP/s of float32 FMAs on all of torch's threads at the chosen ISA level.
double cpu_fma_peak_gflops() {
  constexpr int64_t kSteps = int64_t{1} << 24;  // ~0.1 s per thread on a 3 GHz AVX2 core
  return kernel_table().level(cpu_options().isa).fma_peak_gflops(kSteps);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def("cpu_fma_peak_gflops() -> float", &cpu_fma_peak_gflops);
  m.def("cpu_capabilities() -> str", &cpu_capabilities);
  m.def("cpu_conv_algorithm(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str phase='forward') -> str",
        &cpu_conv_algorithm);
  m.def("cpu_conv_plan(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str phase='forward') -> str",
        &cpu_conv_plan);
}

} // namespace miniplaces_ext::cpu
