// The tensor-core multiply of implicit_gemm.cuh, through the WMMA API:
// fp16 and bf16 operands (and fp32 operands rounded to TF32, when
// torch.backends.cudnn.allow_tf32 allows it), fp32 accumulation.
//
// The block's 64 x 64 tile is 4 x 2 warp tiles of 16 x 32: warp w multiplies
// rows 16 * (w % 4) and columns 32 * (w / 4) as two 16x16x16 fragments per
// k-tile. Shared rows are padded by 8 elements (16 bytes), so the eight rows a
// fragment load touches fall in different banks, and every fragment pointer
// stays 32-byte aligned as load_matrix_sync requires. The epilogue stores the
// fragments to shared memory and writes the tile through Problem::store.
//
// nvcc supplies nvcuda::wmma (<mma.h>); the CPU harness supplies an emulation
// (testing/cuda_on_cpu/wmma_api.h) that checks the same alignment rules and that
// whole warps take part.
#pragma once

#include "gemm_tile.cuh"

#if defined(__CUDACC__)
#include <mma.h>
#endif
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace miniplaces_ext::cuda {

// bf16 and TF32 fragments exist from sm_80 on; fp16 from sm_70 (the oldest GPU we build for is sm_75).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MINIPLACES_AMPERE_MMA 0
#else
#define MINIPLACES_AMPERE_MMA 1
#endif

// How an operand type enters a fragment: the fragment's element type, the
// type in memory, the first compute capability with such tensor cores, the
// fragment's depth (k).
template <typename input_t>
struct WmmaOperand {
  static constexpr bool kExists = false;
};
// A 16-bit operand type: fragments of its CUDA type, 16 deep, no rounding.
template <typename cuda_t, int kCapability, bool kCompiled>
struct HalfWidthWmmaOperand {
  static constexpr bool kExists = true, kSupported = kCompiled;
  static constexpr int kMinCapability = kCapability, kFragmentK = 16;
  using fragment_t = cuda_t;
  using memory_t = cuda_t;
  template <typename Fragment>
  __device__ static void round(Fragment&) {}
};
template <>
struct WmmaOperand<c10::Half> : HalfWidthWmmaOperand<__half, 70, true> {};
template <>
struct WmmaOperand<c10::BFloat16> : HalfWidthWmmaOperand<__nv_bfloat16, 80, MINIPLACES_AMPERE_MMA> {};
template <>
struct WmmaOperand<float> {
  static constexpr bool kExists = true, kSupported = MINIPLACES_AMPERE_MMA;
  static constexpr int kMinCapability = 80, kFragmentK = 8;  // TF32 fragments are 16x16x8
#if MINIPLACES_AMPERE_MMA
  using fragment_t = nvcuda::wmma::precision::tf32;
#else
  using fragment_t = float;  // never instantiated: no TF32 tensor cores before sm_80
#endif
  using memory_t = float;
  // Fragments of fp32 values must be rounded to TF32 before mma_sync.
  template <typename Fragment>
  __device__ static void round(Fragment& f) {
#if MINIPLACES_AMPERE_MMA
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = nvcuda::wmma::__float_to_tf32(f.x[i]);
#endif
  }
};

template <typename input_t>
struct WmmaMma {
  using Operand = WmmaOperand<input_t>;
  using smem_t = input_t;  // operands staged in their own type
  static constexpr bool kSupported = Operand::kSupported;
  static constexpr int kLead = kTileM + 8;
  static constexpr int kLeadC = kTileN + 4;  // fp32 epilogue rows: 16-byte multiple, rows in different banks
  static constexpr const char* kName = "wmma";
  static constexpr int kFragment = 16, kFragmentK = Operand::kFragmentK;  // 16 x 16 x kFragmentK fragments
  static constexpr int kWarpRows = 16, kWarpCols = 32;
  static_assert((kTileM / kWarpRows) * (kTileN / kWarpCols) * kWarpSize == kThreads && kTileK % kFragmentK == 0,
                "warp tiling");

  using Accumulator = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, kFragment, kFragment, kFragmentK, float>;
  struct Accumulators {
    Accumulator c[kWarpCols / kFragment];
  };

  __device__ static int warp_row() { return kWarpRows * ((threadIdx.x / kWarpSize) % (kTileM / kWarpRows)); }
  __device__ static int warp_col() { return kWarpCols * ((threadIdx.x / kWarpSize) / (kTileM / kWarpRows)); }

  __device__ static void clear(Accumulators& acc) {
    for (auto& c : acc.c) nvcuda::wmma::fill_fragment(c, 0.0f);
  }

  // acc += As * Bs over one k-tile: As[k][m] is A column-major, Bs[k][n] is B row-major.
  __device__ static void multiply(Accumulators& acc, const smem_t (&As)[kTileK][kLead], const smem_t (&Bs)[kTileK][kLead]) {
    using namespace nvcuda;
    using memory_t = typename Operand::memory_t;
    using fragment_t = typename Operand::fragment_t;
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += kFragmentK) {
      wmma::fragment<wmma::matrix_a, kFragment, kFragment, kFragmentK, fragment_t, wmma::col_major> a;
      wmma::load_matrix_sync(a, reinterpret_cast<const memory_t*>(&As[kk][warp_row()]), kLead);
      Operand::round(a);
#pragma unroll
      for (int q = 0; q < kWarpCols / kFragment; ++q) {
        wmma::fragment<wmma::matrix_b, kFragment, kFragment, kFragmentK, fragment_t, wmma::row_major> b;
        wmma::load_matrix_sync(b, reinterpret_cast<const memory_t*>(&Bs[kk][warp_col() + kFragment * q]), kLead);
        Operand::round(b);
        wmma::mma_sync(acc.c[q], a, b, acc.c[q]);
      }
    }
  }

  // Fragments to shared memory, then the tile at (m0, n0) through Problem::store.
  template <typename Problem>
  __device__ static void store(const Accumulators& acc, const Problem& p, int64_t z, int64_t m0, int64_t n0,
                               int64_t rows, int64_t cols) {
    alignas(32) __shared__ float Cs[kTileM][kLeadC];
#pragma unroll
    for (int q = 0; q < kWarpCols / kFragment; ++q) {
      nvcuda::wmma::store_matrix_sync(&Cs[warp_row()][warp_col() + kFragment * q], acc.c[q], kLeadC,
                                      nvcuda::wmma::mem_row_major);
    }
    __syncthreads();
    store_thread_outputs(p, z, m0, n0, rows, cols, [&](int row, int col, int, int) { return Cs[row][col]; });
  }
};

} // namespace miniplaces_ext::cuda
