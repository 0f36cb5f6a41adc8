// The shape of a 2-d max-pooling (ops/max_pool.cpp), as its kernel reads it.
#pragma once

#include <cstdint>

namespace miniplaces_ext::cpu {

struct PoolGeometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

} // namespace miniplaces_ext::cpu
