// Weights in the layouts the NHWC kernels read, and a cache of them for inference.
//
// Packing costs a pass over the weight per call (Winograd's transform: 36
// values per 9, in float64). For a call that cannot be a training step's
// forward (weights_stay_packed) the result is kept, keyed by the weight tensor
// and its layout, and reused while the tensor is alive, its version counter
// (bumped by every in-place op on it) is unchanged and its data pointer is the
// same. An inference tensor has no version counter and is never cached.
// In-place changes through `.data` bypass the version counter: call
// miniplaces_ext.clear_weight_cache().
#pragma once

#include "../conv.h"
#include "cpu_options.h"

#include <ATen/core/Tensor.h>

#include <functional>

namespace miniplaces_ext::cpu {

// Whether this forward call keeps its packed weight for the next one: under
// torch.inference_mode, and wherever autograd will not record the call (no_grad, or no
// input requiring grad). A training forward runs inside an autograd Function, which
// turns forward-mode AD off as well as grad mode; torch.no_grad leaves forward-mode AD
// on, so that flag tells the two apart. Training packs per call (its weights change every
// step) and chooses its algorithms without the cache (choose_algo's weight_cached).
bool weights_stay_packed();

// [Cout, Cg, kh, kw] -> [groups][blocks][kh][kw][Cg][block_width] for the
// direct kernel, output channels zero-filled past Cout/groups.
at::Tensor pack_direct_weight(const at::Tensor& weight, const ConvGeometry& g, int64_t block_width);

// The bfloat16 [Cout, Cin, kh, kw] weight of a one-group convolution with an
// even g.in_channels >= Cin as [1][blocks][kh][kw][g.in_channels/2][block_width][2]
// for the pair kernel (channels past Cin and output channels past Cout zero).
at::Tensor pack_direct_weight_pairs(const at::Tensor& weight, const ConvGeometry& g, int64_t block_width);

// The Winograd F(4x4, 3x3) weight U[xi][block][Cin][block_width] (xi = 6*row +
// column of G w G^T, output channels zero-padded to whole blocks), in float64
// then rounded to float32.
at::Tensor winograd_transform_weight(const at::Tensor& weight, int64_t block_width);

// The weight packed for `algo` (direct or winograd) with `block_width` output
// channels per block, in float32 (a bfloat16 or float16 weight is widened);
// from the cache when `cacheable` and packed before.
at::Tensor packed_weight(Algo algo, const at::Tensor& weight, const ConvGeometry& g, int64_t block_width,
                         bool cacheable);

// pack_direct_weight_pairs(weight, g, block_width), cached like packed_weight.
at::Tensor packed_weight_pairs(const at::Tensor& weight, const ConvGeometry& g, int64_t block_width, bool cacheable);

// [Cout, C, kh, kw] as rows [Cout, depth] in (kh, kw, c) order, zeros from patch_size() to
// `depth`: the weight of a few-channel layer reduced over (kh, kw, c) together (lowered_conv.cpp;
// the tile grad_input of such a layer, ops/grad_input.cpp).
at::Tensor lowered_weight_rows(const at::Tensor& weight, const ConvGeometry& g, int64_t depth);

// The bfloat16 weight of a few-channel layer reduced over (kh, kw, c) together (lowered_conv.cpp):
// [Cout, C, kh, kw] as [Cout, depth] in (kh, kw, c) order, zeros from patch_size() to `depth`,
// packed by pack_direct_weight_pairs as a 1x1 convolution of `depth` channels; cached like
// packed_weight.
at::Tensor packed_lowered_weight(const at::Tensor& weight, const ConvGeometry& g, int64_t depth, int64_t block_width,
                                 bool cacheable);

} // namespace miniplaces_ext::cpu
