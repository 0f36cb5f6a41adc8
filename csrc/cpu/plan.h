// The ConvPlan: what one call of a CPU convolution pass runs, decided once per call (the idea of a
// oneDNN primitive descriptor). Made from the geometry, the dtype, the pass, the inference state
// and the options (read once for the call: cpu_options.h); it names the algorithm, the ISA level,
// the bfloat16 unit, the kernel entry (from kernel_table.h's one table), the packing, how the input
// is read and the epilogue. The passes (ops/) execute plans and never decide again;
// cpu_conv_algorithm / cpu_conv_plan print them.
#pragma once

#include "../conv.h"
#include "cpu_info.h"
#include "cpu_options.h"
#include "kernel_table.h"

#include <string>

namespace miniplaces_ext::cpu {

// Which unit multiplies a direct convolution's bfloat16 operands: none (they are widened to
// float32), pairs (vec_bf16_pairs.h: vdpbf16ps or its emulation) or tiles (tile_block.h: AMX or its
// emulation).
enum class Bf16Kernel : int { none = 0, pairs = 1, tiles = 2 };

enum class Pass : int { forward = 0, grad_input = 1, grad_weight = 2 };

// How the weight gradient is computed: bfloat16 tile products (weight_grad_tiles.h), the float32
// weight-gradient kernel (weight_grad_kernel.h), or im2col + GEMM.
enum class WeightGradMethod : int { tiles = 0, kernel = 1, gemm = 2 };

// How a forward-type pass reads its input.
enum class InputStrategy : int {
  as_is = 0,     // through its strides, rows laid out NHWC per thread as the kernel reaches them
  widened = 1,   // bfloat16 / float16 widened to float32 (as it is laid out NHWC)
  lowered = 2,   // a few-channel bfloat16 layer on tiles: receptive fields as rows (lowered_conv.cpp)
  columns = 3,   // im2col rows for a GEMM (float64, and layers no kernel takes)
};

// What is applied to the float32 sums before they are written, in this order: the bias (a folded
// BatchNorm's shift too: optimize_for_inference folds it into the bias), added as the register
// block is stored; + residual (the skip connection); ReLU. Then one rounding to the output dtype.
struct Epilogue {
  bool bias = false;
  bool residual = false;
  bool relu = false;
};

struct ConvPlan {
  ConvGeometry g;
  at::ScalarType dtype;
  Pass pass;
  bool weight_cached;   // the packed weight is kept for the next call (inference)
  CpuOptions options;   // as read once for this call
  Algo algo;            // forward / grad_input: direct, winograd or gemm
  Bf16Kernel unit;      // the bfloat16 unit of the direct kernel
  bool unit_native;     // that unit runs on this CPU's instructions (else on its emulation)
  WeightGradMethod weight_grad;  // grad_weight
  bool vector_over_input;        // grad_weight kernel: vectors over the input's channels (else grad_output's)
  InputStrategy input;
  int64_t block;        // output channels per packed weight block (with the algorithm, the packing key)
  IsaKernels::NhwcConv kernel;  // forward / grad_input: the entry that runs it; null for gemm
  Epilogue epilogue;

  // "direct", "winograd", "gemm", "direct-bf16" (pairs), "direct-bf16-tiles"; for grad_weight
  // "direct-bf16-tiles", "direct" (the weight-gradient kernel) or "gemm".
  std::string algorithm_name() const;
  // Every decision, one line: "pass=forward algo=direct isa=avx512 unit=tiles(native) ...".
  std::string describe() const;
};

// The plan of a forward convolution, or of one stride phase of a grad_input (pass grad_input: a
// stride-1 forward convolution of grad_output, no bias). `weight_cached`: inference
// (weights_stay_packed). `gemm_form`: false where the result goes to a strided view, which the
// 1x1 GEMM path cannot write.
//  - float64: gemm (im2col + GEMM), whatever is asked; bfloat16 and float16 as float32 (widened);
//  - algo option direct|gemm: that algorithm; winograd: Winograd where it applies, else auto's;
//  - auto, bfloat16 on a CPU with AMX (tiles): direct;
//  - auto: Winograd for 3x3 stride-1 layers with enough tiles to repay the weight transform
//    (fewer when the transform is kept); gemm for 1x1 layers without padding (a GEMM over the
//    sampled pixels) when `gemm_form`; the direct kernel where its register block is at least half
//    filled; else gemm. The portable level (4-wide vectors, no FMA on baseline x86-64) takes gemm.
// `options`: read once per call (cpu_options()) and given to every plan of that call.
ConvPlan plan_convolution(const CpuOptions& options, const ConvGeometry& g, at::ScalarType dtype, Pass pass,
                          bool weight_cached, Epilogue epilogue, bool gemm_form = true);

// The plan of a weight gradient of `dtype` operands: bfloat16 tiles where the bf16 option takes
// tiles (one group; a few-channel layer lowered, its column taps folded into the channels); the weight-gradient kernel for float32 (bfloat16 and
// float16 widened) with one group and a channel count filling whole register blocks, when asked
// (algo=direct) or where it beats im2col + GEMM (not 1x1, rows long enough, not portable); else gemm.
ConvPlan plan_weight_grad(const CpuOptions& options, const ConvGeometry& g, at::ScalarType dtype);

// True when the Winograd F(4x4, 3x3) kernel can compute this convolution (3x3, stride 1,
// dilation 1, one group).
bool winograd_applies(const ConvGeometry& g);

// True when a bfloat16 layer on tiles is lowered (lowered_conv.cpp): one group of fewer than 16
// input channels, a kernel larger than 1x1, undilated columns.
bool lowered_applies(const ConvGeometry& g);

// The reduction depth of a lowered layer: patch_size() rounded up to whole tile products (32
// bfloat16 values), the length of each pixel's lowered row and of each lowered weight row.
int64_t lowered_depth(const ConvGeometry& g);

} // namespace miniplaces_ext::cpu
