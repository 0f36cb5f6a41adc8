// The one place that knows the CPU and picks a CPU kernel.
//
// The instruction-set level is read from CPUID once. MINIPLACES_CPU_ISA
// (portable | avx2 | avx512) lowers it, never raises it: asking for a level
// the CPU lacks is an error. MINIPLACES_CPU_ALGO (auto | direct | gemm)
// forces an algorithm where it applies. Both are read on every call, so a
// test can change them between calls.
#pragma once

#include "../conv.h"

#include <string>
#include <vector>

namespace miniplaces_ext::cpu {

// Instruction-set levels, lowest first: each one includes the ones before it.
enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

enum class Algo : int { automatic = 0, direct = 1, gemm = 2 };

const char* isa_name(Isa isa);

// The highest level this CPU (and its OS) supports; CPUID is read once.
Isa detected_isa();

// Every level up to detected_isa(), lowest first.
std::vector<Isa> supported_isas();

// The level kernels use: MINIPLACES_CPU_ISA if set (checked), else detected_isa().
Isa chosen_isa();

// MINIPLACES_CPU_ALGO if set (checked), else Algo::automatic.
Algo chosen_algo();

// True when the direct kernel computes this float32 problem at the chosen ISA
// level: always when MINIPLACES_CPU_ALGO=direct, never when =gemm, and by
// default where it is faster than im2col + GEMM (vector ISAs, enough output
// channels per group to fill the register block).
bool use_direct_conv(const ConvGeometry& g, at::ScalarType dtype);

// out [N, Ho, Wo, Cout] (NHWC, contiguous) of the convolution of the
// contiguous NHWC float32 input x [N, H, W, C] with weight [Cout, Cg, kh, kw],
// computed by the direct kernel of the chosen ISA level.
at::Tensor direct_conv2d_nhwc(const at::Tensor& x_nhwc, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const ConvGeometry& g);

// The direct kernel at each level (direct_conv_<level>.cpp). The x86 levels
// exist only in x86-64 builds and must only be called when the CPU has them.
at::Tensor direct_conv2d_nhwc_portable(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, const ConvGeometry& g);
#if defined(__x86_64__)
at::Tensor direct_conv2d_nhwc_avx2(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, const ConvGeometry& g);
at::Tensor direct_conv2d_nhwc_avx512(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const ConvGeometry& g);
#endif

} // namespace miniplaces_ext::cpu
