// The WMMA API (nvcuda::wmma, CUDA's <mma.h>) and the tensor-core element
// types, for running csrc/cuda/wmma_mma.cuh on the CPU (included by device_api.h).
//
// Every lane holds its warp's whole fragment (element (r, c) at x[r * cols + c]);
// on a GPU each lane holds an unspecified share, which our kernels never look
// at except to round every element to TF32, which works either way.
// What the hardware requires is checked, and a violation is reported like a fault:
//   - load/store pointers 32-byte aligned and ldm a multiple of 16 bytes;
//   - every lane of a warp performs the same warp-collective operations
//     (block_runner checks the counts at each barrier and at the end);
//   - TF32 operands rounded with __float_to_tf32 before mma_sync.
// mma_sync multiplies in float and adds the products in k order in float.
#pragma once

#include "block_runner.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

[[noreturn]] inline void __trap() { ::miniplaces_ext::cuda_on_cpu::fail_in_kernel("__trap() called"); }

namespace nvcuda::wmma {

struct matrix_a;
struct matrix_b;
struct accumulator;
struct row_major;
struct col_major;
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32;
}

namespace detail {
template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};
template <typename Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

inline void check_memory(const void* pointer, unsigned ldm, size_t element_bytes, const char* what) {
  ::miniplaces_ext::cuda_on_cpu::warp_collective();
  if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0) {
    ::miniplaces_ext::cuda_on_cpu::fail_in_kernel(std::string(what) + ": pointer not 32-byte aligned");
  }
  if ((ldm * element_bytes) % 16 != 0) {
    ::miniplaces_ext::cuda_on_cpu::fail_in_kernel(std::string(what) + ": ldm " + std::to_string(ldm) +
                                                  " is not a multiple of 16 bytes");
  }
}

inline bool is_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x1fffu) == 0 || (bits & 0x7f800000u) == 0x7f800000u;
}
} // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = detail::shape<Use, M, N, K>::rows, cols = detail::shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  typename detail::storage<T>::type x[num_elements];
};

// fp32 rounded to TF32 (10 mantissa bits), to nearest with ties away from zero as cvt.rna.tf32.f32.
inline float __float_to_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7f800000u) != 0x7f800000u) {
    bits = (bits + 0x1000u) & ~0x1fffu;
  }
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename Value>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const Value& v) {
  ::miniplaces_ext::cuda_on_cpu::warp_collective();
  for (auto& e : f.x) e = static_cast<typename detail::storage<T>::type>(v);
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename Element>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const Element* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check_memory(p, ldm, sizeof(Element), "wmma::load_matrix_sync");
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) {
      const Element& e = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
      f.x[r * F::cols + c] = static_cast<typename detail::storage<T>::type>(e);
    }
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm, layout_t layout) {
  detail::check_memory(p, ldm, sizeof(float), "wmma::store_matrix_sync");
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) {
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
    }
  }
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float, void>& c) {
  ::miniplaces_ext::cuda_on_cpu::warp_collective();
  if constexpr (std::is_same_v<TA, precision::tf32>) {
    for (float v : a.x) {
      if (!detail::is_tf32(v)) ::miniplaces_ext::cuda_on_cpu::fail_in_kernel("wmma::mma_sync: a TF32 operand not rounded with __float_to_tf32");
    }
    for (float v : b.x) {
      if (!detail::is_tf32(v)) ::miniplaces_ext::cuda_on_cpu::fail_in_kernel("wmma::mma_sync: a TF32 operand not rounded with __float_to_tf32");
    }
  }
  float out[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k) sum += static_cast<float>(a.x[i * K + k]) * static_cast<float>(b.x[k * N + j]);
      out[i * N + j] = sum;
    }
  }
  std::memcpy(d.x, out, sizeof(out));
}

} // namespace nvcuda::wmma
