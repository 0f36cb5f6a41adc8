// CUDA's 8- and 16-byte vector types and their read-only loads (__ldg), for
// running csrc/cuda/vector_access.cuh on the CPU (included by device_api.h).
// What the hardware requires is checked: the address aligned to the access size
// (a GPU raises "misaligned address"); reads past a buffer fault on its guard page.
#pragma once

#include "block_runner.h"

#include <cstdint>
#include <string>

struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned int x, y;
};

namespace miniplaces_ext::cuda_on_cpu {
template <typename Vector>
Vector aligned_load(const Vector* p) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(Vector) != 0) {
    fail_in_kernel("__ldg of " + std::to_string(sizeof(Vector)) + " bytes from an address not aligned to its size");
  }
  return *p;
}
} // namespace miniplaces_ext::cuda_on_cpu

inline uint4 __ldg(const uint4* p) { return ::miniplaces_ext::cuda_on_cpu::aligned_load(p); }
inline uint2 __ldg(const uint2* p) { return ::miniplaces_ext::cuda_on_cpu::aligned_load(p); }
