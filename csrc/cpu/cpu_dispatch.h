// The one place that picks a CPU kernel for a call: the CPU (cpu_info.h) and the switches
// (cpu_options.h, read once) decide the algorithm, the ISA level and the bfloat16 kernel.
#pragma once

#include "../conv.h"
#include "cpu_info.h"
#include "cpu_options.h"

#include <optional>
#include <string>
#include <vector>

namespace miniplaces_ext::cpu {

// Which bfloat16 kernel multiplies a direct convolution's bfloat16 operands: none (they are
// widened to float32), pairs (vec_bf16_pairs.h) or tiles (tile_block.h).
enum class Bf16Kernel : int { none = 0, pairs = 1, tiles = 2 };

// The bfloat16 kernel of this convolution, of dtype `dtype` computed by `algo`: none unless
// bfloat16, the direct kernel and one group; then what the bf16 option asks for (see above).
Bf16Kernel bf16_kernel(const ConvGeometry& g, at::ScalarType dtype, Algo algo);

// True when the Winograd F(4x4, 3x3) kernel can compute this convolution
// (3x3, stride 1, dilation 1, one group).
bool winograd_applies(const ConvGeometry& g);

// The algorithm that computes this problem (never `automatic`):
//  - float64: gemm (im2col + GEMM), whatever is asked; bfloat16 and float16
//    as float32 (their operands are widened to float32 for the kernels);
//  - algo option direct|gemm: that algorithm; winograd: Winograd
//    where it applies, else what `auto` picks;
//  - auto, bfloat16 on a CPU with AMX (bf16_kernel gives tiles): direct;
//  - auto: Winograd for 3x3 stride-1 layers with enough tiles to repay the
//    weight transform (fewer when `weight_cached`: the transform is kept);
//    gemm for 1x1 layers without padding (a GEMM over the sampled pixels)
//    when `gemm_form` (false when the result goes to a strided view, which
//    that GEMM cannot write: a phase of a strided layer's grad_input); the
//    direct kernel where its register block is at least half filled; else
//    gemm. The portable level (4-wide vectors, no FMA on baseline x86-64)
//    takes gemm.
Algo choose_algo(const ConvGeometry& g, at::ScalarType dtype, bool weight_cached, bool gemm_form = true);

// out [N, Cout, Ho, Wo], float32 (bfloat16 for a bfloat16 kernel, rounded once from float32
// sums), in `out_format` (written in place by the
// kernel: no conversion afterwards), of the convolution of the input
// x [N, C, H, W] with weight [Cout, Cg, kh, kw], computed by `algo` (direct or
// winograd) at the chosen ISA level. The kernels compute in NHWC: a
// channels_last x is read in place, any other layout through its strides,
// its rows laid out NHWC as the kernel reaches them (input_rows.h). x is
// float32, or bfloat16 for a bfloat16 kernel (bf16_kernel; converted to
// NHWC here, an odd channel count padded with a zero channel);
// bias is float32. With `cache_weight` the packed weight is kept for the next
// call (packed_weights.h).
at::Tensor nhwc_conv2d(Algo algo, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const ConvGeometry& g, bool cache_weight, at::MemoryFormat out_format);

// True when the weight-gradient kernel (no im2col matrix) computes this problem's weight
// gradient: float32, one group, one of the channel counts a multiple of the register block's
// width, and MINIPLACES_CPU_ALGO=direct, or auto on a layer where it beats im2col + GEMM (not
// 1x1, output rows of 16 pixels or more, not the portable level).
bool weight_grad_kernel_applies(const ConvGeometry& g, at::ScalarType dtype);

// The weight gradient [Cout, Cin, kh, kw] of a float32 convolution (weight_grad_kernel_applies)
// from its input x [N, Cin, H, W] and grad_output dy [N, Cout, Ho, Wo], any strides.
at::Tensor nhwc_weight_grad(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g);

// Checks that `out` can take the result of g: float32 (or, with `bf16_allowed`, bfloat16)
// [N, Cout, Ho, Wo], any strides.
void check_output(const at::Tensor& out, const ConvGeometry& g, bool bf16_allowed = false);

// Writes the convolution of g (as nhwc_conv2d) into `out`, float32 [N, Cout, Ho, Wo] with any
// strides (a strided view of a larger tensor, say); bfloat16 too for a bfloat16 kernel.
void nhwc_conv2d_out(Algo algo, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const ConvGeometry& g, bool cache_weight, const at::Tensor& out);

// The kernels of one ISA level (kernels_<level>.cpp), taking the weight packed
// for them (packed_weights.h). The x86 levels exist only in x86-64 builds and
// must only be used when the CPU has them.
struct IsaKernels {
  // Writes out, float32 [N, Cout, Ho, Wo] with any strides (check_output), from x [N, C, H, W]
  // with any strides.
  using NhwcConv = void (*)(const at::Tensor& x, const at::Tensor& packed_weight,
                            const c10::optional<at::Tensor>& bias, const ConvGeometry& g, const at::Tensor& out);
  NhwcConv direct;
  NhwcConv winograd;
  // The direct kernel on bfloat16 pairs, emulated with float32 FMAs (vec_bf16_pairs.h).
  NhwcConv direct_bf16_pairs_emulated;
  // Adds the weight gradient to sums [kh][kw][rows][columns] (weight_grad_kernel.h), from x
  // [N, Cin, H, W] and dy [N, Cout, Ho, Wo] with any strides.
  void (*weight_grad)(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g, bool vector_over_input,
                      const at::Tensor& sums);
  // Measured float32 FMA throughput of all threads, GFLOP/s (fma_peak.h).
  double (*fma_peak_gflops)(int64_t steps);
};

// The weight gradient, float32 [Cout, Cin, kh, kw], of a bfloat16 one-group convolution
// on tiles (weight_grad_tiles.h), from its input and grad_output (bfloat16, any strides).
using TileWeightGradFn = at::Tensor (*)(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g);

// The weight gradient of a bfloat16 convolution on tiles where the bf16 option takes tiles for it
// (one group, not a few-channel layer: lowered_applies), else nullopt: float32, rounded by the caller.
std::optional<at::Tensor> tiles_weight_grad(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g);

const IsaKernels& portable_kernels();
#if defined(__x86_64__)
const IsaKernels& avx2_kernels();
const IsaKernels& avx512_kernels();
// The direct kernel on bfloat16 pairs with vdpbf16ps: only on CPUs with AVX512-BF16.
IsaKernels::NhwcConv avx512_bf16_pairs_direct();
// The direct kernel on AMX tiles: only where has_amx_bf16().
IsaKernels::NhwcConv amx_bf16_tiles_direct();
#endif
// The direct kernel on emulated tiles (tiles_emulated.h), for any CPU: slow, for tests.
IsaKernels::NhwcConv bf16_tiles_emulated_direct();
TileWeightGradFn bf16_tiles_emulated_weight_grad();
#if defined(__x86_64__)
TileWeightGradFn amx_bf16_tiles_weight_grad();  // only where has_amx_bf16()
#endif

// True when a bfloat16 layer on tiles is lowered (lowered_conv.cpp): one group of fewer than 16
// input channels, a kernel larger than 1x1.
bool lowered_applies(const ConvGeometry& g);

// Writes `out` (as nhwc_conv2d_out) for a bfloat16 layer where lowered_applies(g): each output
// pixel's receptive field laid out as one zero-padded row, then `tile_conv` (the direct kernel on
// tiles) computes the 1x1 convolution of those rows with the weight laid out alike.
void lowered_conv2d_out(IsaKernels::NhwcConv tile_conv, const at::Tensor& x, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const ConvGeometry& g, const at::Tensor& out);

} // namespace miniplaces_ext::cpu
