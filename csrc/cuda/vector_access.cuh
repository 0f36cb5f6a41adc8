// Vector global loads for the main loops: kN consecutive elements in one access
// of 8 or 16 bytes (LDG.64 / LDG.128 through the read-only data path, __ldg),
// or several 16-byte accesses (fp64). The address must be aligned to the access:
// the host launches vector main loops only on operands it has checked
// (conv_ops.cuh: channels_innermost_vectors).
#pragma once

#include <cstring>

namespace miniplaces_ext::cuda {

template <typename T, int kN>
__device__ __forceinline__ void load_vector(const T* p, T (&out)[kN]) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * kN;
  static_assert(kBytes % 8 == 0 && (kBytes == 8 || kBytes % 16 == 0), "vector loads are 8 bytes or 16-byte units");
  if constexpr (kBytes == 8) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    memcpy(out, &raw, kBytes);
  } else {
    uint4 raw[kBytes / 16];
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) raw[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
    memcpy(out, raw, kBytes);
  }
}

} // namespace miniplaces_ext::cuda
