// The part of a plan's epilogue (plan.h) that a kernel applies past the bias: + residual (a
// ResNet block's skip connection), then ReLU, on the float32 sums before they are written, so that
// a bfloat16 output is rounded once and no pass over memory follows the convolution. The direct
// kernel applies it to each output row while the row is in L1/L2 (row buffer or just stored);
// Winograd in registers, as its output transform writes.
#pragma once

#include "../../conv.h"

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace miniplaces_ext::cpu {

struct OutputEpilogue {
  const void* residual = nullptr;  // [N, Cout, Ho, Wo] through `strides`: float32, or bfloat16 bits
  bool residual_bf16 = false;
  Strides4 strides{};
  bool relu = false;

  bool any() const { return residual != nullptr || relu; }

  // The same epilogue for the images from n0 on (a kernel run over part of the batch).
  OutputEpilogue from_image(int64_t n0) const {
    OutputEpilogue e = *this;
    if (residual != nullptr) {
      e.residual = static_cast<const char*>(residual) + n0 * strides.n * (residual_bf16 ? 2 : 4);
    }
    return e;
  }

  // The residual element (n, c, h, w) in float32.
  float residual_at(int64_t offset) const {
    if (!residual_bf16) {
      return static_cast<const float*>(residual)[offset];
    }
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(residual)[offset]) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }

  // Applies it to `columns` output channels from co0 of output row (n, oh), whose float32 values
  // are at row[ow * pixel_stride + j] (j < columns, channel co0 + j), ow < out_w. ReLU keeps NaN
  // (as torch's does).
  void apply_row(float* row, int64_t pixel_stride, int64_t out_w, int64_t n, int64_t oh, int64_t co0,
                 int64_t columns) const {
    for (int64_t ow = 0; ow < out_w; ++ow) {
      float* v = row + ow * pixel_stride;
      if (residual != nullptr) {
        const int64_t first = strides.at(n, co0, oh, ow);
        if (!residual_bf16 && strides.c == 1) {
          const float* r = static_cast<const float*>(residual) + first;
          for (int64_t j = 0; j < columns; ++j) {
            v[j] += r[j];
          }
        } else {
          for (int64_t j = 0; j < columns; ++j) {
            v[j] += residual_at(first + j * strides.c);
          }
        }
      }
      if (relu) {
        for (int64_t j = 0; j < columns; ++j) {
          v[j] = v[j] < 0.0f ? 0.0f : v[j];
        }
      }
    }
  }
};

} // namespace miniplaces_ext::cpu
