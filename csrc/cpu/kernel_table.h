// The one table of CPU kernel entries: every variant, per ISA level, the bfloat16 units (native and
// emulated) included. A ConvPlan (plan.h) takes its entry from here once per call.
#pragma once

#include "../conv.h"
#include "cpu_info.h"
#include "pool_geometry.h"
#include "kernels/epilogue.h"

#include <ATen/core/Tensor.h>

namespace miniplaces_ext::cpu {

// The kernels of one ISA level (kernels/kernels_<level>.cpp), taking the weight packed for them
// (packed_weights.h). The x86 levels exist only in x86-64 builds and must only be used when the
// CPU has them.
struct IsaKernels {
  // Writes out, float32 [N, Cout, Ho, Wo] with any strides (check_output), from x [N, C, H, W]
  // with any strides: the sums + bias, then the epilogue (kernels/epilogue.h).
  using NhwcConv = void (*)(const at::Tensor& x, const at::Tensor& packed_weight,
                            const c10::optional<at::Tensor>& bias, const ConvGeometry& g,
                            const OutputEpilogue& epilogue, const at::Tensor& out);
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
  // out [N, Ho, Wo, C] = the window maxima of x [N, H, W, C], both contiguous channels_last, of
  // float32 / bfloat16 (max_pool_kernel.h).
  using MaxPool = void (*)(const at::Tensor& x, const PoolGeometry& g, const at::Tensor& out);
  MaxPool max_pool_float32;
  MaxPool max_pool_bfloat16;
};

// The weight gradient, float32 [Cout, Cin, kh, kw], of a bfloat16 one-group convolution
// on tiles (weight_grad_tiles.h), from its input and grad_output (bfloat16, any strides).
using TileWeightGradFn = at::Tensor (*)(const at::Tensor& x, const at::Tensor& dy, const ConvGeometry& g);

// The kernels of one tile unit (AMX, or its emulation in plain C++) on bfloat16 operands.
struct TileKernels {
  IsaKernels::NhwcConv direct;  // packed_weight from pack_direct_weight_pairs
  // Few-channel layers reduced over (kh, kw, c) together, each pixel's receptive field laid out in
  // cache as the kernel reaches it (direct_conv_kernel.h, lowered_conv.cpp); packed_weight is the
  // [Cout, depth] weight of lowered_conv.cpp packed as a 1x1 convolution's.
  IsaKernels::NhwcConv lowered;
  TileWeightGradFn weight_grad;
  // The weight gradient of a few-channel layer, its column taps folded into the channels.
  TileWeightGradFn weight_grad_lowered;
  // Writes grad_input dx [N, Cin, H, W] (bfloat16, any strides) of a few-channel layer from dy
  // (bfloat16 [N, Cout, Ho, Wo], any strides, Cout even) and the weight packed [Cout / 2][columns][2]
  // by receptive-field value (grad_input_tiles.h).
  void (*grad_input_lowered)(const at::Tensor& dy, const at::Tensor& packed, const ConvGeometry& g,
                             const at::Tensor& dx);
};

// Every entry. The native tile and pair entries are null where the build has no x86 code; the
// plan takes them only where the CPU has the instructions (cpu_info.h).
struct KernelTable {
  const IsaKernels* levels[3];  // indexed by Isa; the x86 levels null in a non-x86 build
  TileKernels tiles_native, tiles_emulated;
  IsaKernels::NhwcConv bf16_pairs_native;  // the direct kernel on vdpbf16ps pairs

  // The kernels of level `isa` (which this CPU must have).
  const IsaKernels& level(Isa isa) const;
};

const KernelTable& kernel_table();

// The per-file instantiations the table is made of.
const IsaKernels& portable_kernels();
#if defined(__x86_64__)
const IsaKernels& avx2_kernels();
const IsaKernels& avx512_kernels();
// The direct kernel on bfloat16 pairs with vdpbf16ps: only on CPUs with AVX512-BF16.
IsaKernels::NhwcConv avx512_bf16_pairs_direct();
// The kernels on AMX tiles: only where has_amx_bf16().
TileKernels amx_tile_kernels();
#endif
// The kernels on emulated tiles (tiles_emulated.h), for any CPU: slow, for tests.
TileKernels emulated_tile_kernels();

// Checks that `out` can take the result of g: float32 (or, with `bf16_allowed`, bfloat16)
// [N, Cout, Ho, Wo], any strides.
void check_output(const at::Tensor& out, const ConvGeometry& g, bool bf16_allowed = false);

} // namespace miniplaces_ext::cpu
