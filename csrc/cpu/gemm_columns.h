// The im2col + GEMM path's operands: chunk sizes within the column_bytes option, the im2col rows
// of a run of output pixels (ColumnSource), and the weight as a GEMM matrix.
//
// With the weight viewed as [out_channels, kh*kw*c] and one im2col row per output pixel:
//   forward      out[pixels, Cout]  = col[pixels, K] @ W^T[K, Cout] (+ bias)
//   grad_weight  dW[Cout, K]       += dY^T[Cout, pixels] @ col[pixels, K]
//   grad_input   dcol[pixels, K]    = dY[pixels, Cout] @ W[Cout, K], then col2im (im2col.h)
// The batch is folded into the pixel dimension, processed in chunks so that the column buffer
// stays bounded; 1x1 layers without padding skip im2col and multiply the sampled pixels.
#pragma once

#include "../conv.h"

#include <ATen/core/Tensor.h>

namespace miniplaces_ext::cpu {

// Whole images per im2col (or col2im) chunk of the forward pass and grad_input: at most
// `column_bytes` of columns (the column_bytes option: 4 MiB unless set; tests lower it to run
// many chunks), at least one image. Chunks small enough to stay in L2/L3 between the GEMM that
// writes them and the pass that reads them, and one buffer reused: AlexNet's 11x11/4 grad_input
// 67 -> 50 ms, the stem's 124 -> 88-97 ms, the forward GEMM path 0-30 % faster than with 64 MiB
// chunks (Zen 1, 2 threads, batch 32).
int64_t images_per_chunk(const ConvGeometry& g, int64_t element_size, int64_t column_bytes);

// Output pixels per im2col chunk of the weight gradient, which sums over pixels and so can take
// any run of them (not only whole images), so that each chunk is multiplied while it is still in
// cache (measured: 10-20 % faster on ResNet-18's 3x3 layers than chunks of whole images).
int64_t weight_grad_rows(const ConvGeometry& g, int64_t element_size, int64_t column_bytes);

// Produces the im2col matrix of a run of output pixels and one group, reusing one buffer of up
// to max_rows rows. A 1x1 convolution without padding needs no im2col: its matrix is the sampled
// pixels themselves, gathered once (a view when the stride is 1 and the input channels_last).
class ColumnSource {
 public:
  ColumnSource(const at::Tensor& input, const ConvGeometry& g, int64_t max_rows);

  // Columns of output pixels [row0, row0 + rows), group `group`: [rows, patch_size].
  at::Tensor columns(int64_t row0, int64_t rows, int64_t group);

 private:
  at::Tensor x_pixels_;
  const ConvGeometry& g_;
  at::Tensor buffer_;
};

// The weight as [out_channels, kh*kw*Cg], rows ordered like the im2col rows.
at::Tensor weight_matrix(const at::Tensor& weight, const ConvGeometry& g);

} // namespace miniplaces_ext::cpu
