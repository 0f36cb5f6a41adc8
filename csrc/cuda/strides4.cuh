// How a kernel addresses a 4-D tensor in any memory layout (NCHW, NHWC, ...).
#pragma once

#include <cstdint>

namespace miniplaces_ext::cuda {

// Element strides of a 4-D tensor's dimensions (N, C, H, W) — or (Cout, Cin, kh, kw) of a weight.
struct Strides4 {
  int64_t n, c, h, w;
  __host__ __device__ int64_t at(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

} // namespace miniplaces_ext::cuda
