// The register block shared by the direct and Winograd kernels: R rows x
// 2*kLanes columns of float32 accumulators, updated by a rank-1 product per
// step of the reduction (two weight-vector loads, R broadcasts, 2R FMAs) or,
// for bfloat16 operands, a rank-2 product per pair of steps (2R dot_pairs),
// and stored to any (row, column) strides (NHWC or NCHW outputs).
//
// Include only after the vector traits (vec_<isa>.h), inside the same target
// pragma, so that it is compiled for that ISA alone.
#pragma once

#include <algorithm>
#include <cstdint>

namespace miniplaces_ext::cpu {

// Stores lanes [0, n) of v to p[0], p[stride], p[2 * stride], ...: one vector
// store when the lanes are contiguous (stride 1), else one store per lane.
template <typename Vec>
inline void store_lanes(float* p, int64_t stride, typename Vec::Reg v, int n) {
  if (stride == 1) {
    if (n == Vec::kLanes) {
      Vec::store(p, v);
    } else {
      Vec::store_partial(p, v, n);
    }
    return;
  }
  alignas(64) float lanes[Vec::kLanes];
  Vec::store(lanes, v);
  for (int i = 0; i < n; ++i) {
    p[i * stride] = lanes[i];
  }
}

template <typename Vec, int R>
struct RegisterBlock {
  using Reg = typename Vec::Reg;
  static constexpr int kLanes = Vec::kLanes;
  static constexpr int kColumns = 2 * kLanes;

  Reg acc0[R];
  Reg acc1[R];

  RegisterBlock() {
    for (int r = 0; r < R; ++r) {
      acc0[r] = Vec::zero();
      acc1[r] = Vec::zero();
    }
  }

  // acc[r][j] += sum_{k < depth} a[r * a_row_stride + k] * b[k * kColumns + j]:
  // `a` is R rows of a row-major matrix, `b` a packed [depth][kColumns] panel.
  void accumulate(const float* a, int64_t a_row_stride, const float* b, int64_t depth) {
    for (int64_t k = 0; k < depth; ++k) {
      const Reg b0 = Vec::load(b + k * kColumns);
      const Reg b1 = Vec::load(b + k * kColumns + kLanes);
      for (int r = 0; r < R; ++r) {
        const Reg av = Vec::broadcast(a[r * a_row_stride + k]);
        acc0[r] = Vec::fma(av, b0, acc0[r]);
        acc1[r] = Vec::fma(av, b1, acc1[r]);
      }
    }
  }

  // The same with one pointer per row: acc[r][j] += sum_k rows[r][k] * b[k * kColumns + j].
  void accumulate(const float* const (&rows)[R], const float* b, int64_t depth) {
    for (int64_t k = 0; k < depth; ++k) {
      const Reg b0 = Vec::load(b + k * kColumns);
      const Reg b1 = Vec::load(b + k * kColumns + kLanes);
      for (int r = 0; r < R; ++r) {
        const Reg av = Vec::broadcast(rows[r][k]);
        acc0[r] = Vec::fma(av, b0, acc0[r]);
        acc1[r] = Vec::fma(av, b1, acc1[r]);
      }
    }
  }

  // bfloat16 operands taken in pairs (Vec has vec_bf16_pairs.h's interface):
  // acc[r][j] += sum_{k < 2 * pairs} a[r * a_row_stride + k] * b[k / 2][j][k % 2],
  // `b` a packed [pairs][kColumns][2] panel.
  void accumulate_pairs(const uint16_t* a, int64_t a_row_stride, const uint16_t* b, int64_t pairs) {
    for (int64_t p = 0; p < pairs; ++p) {
      const auto b0 = Vec::load_pairs(b + p * 2 * kColumns);
      const auto b1 = Vec::load_pairs(b + p * 2 * kColumns + 2 * kLanes);
      for (int r = 0; r < R; ++r) {
        const auto av = Vec::broadcast_pair(a + r * a_row_stride + 2 * p);
        acc0[r] = Vec::dot_pairs(acc0[r], av, b0);
        acc1[r] = Vec::dot_pairs(acc1[r], av, b1);
      }
    }
  }

  // The same with one pointer per row.
  void accumulate_pairs(const uint16_t* const (&rows)[R], const uint16_t* b, int64_t pairs) {
    for (int64_t p = 0; p < pairs; ++p) {
      const auto b0 = Vec::load_pairs(b + p * 2 * kColumns);
      const auto b1 = Vec::load_pairs(b + p * 2 * kColumns + 2 * kLanes);
      for (int r = 0; r < R; ++r) {
        const auto av = Vec::broadcast_pair(rows[r] + 2 * p);
        acc0[r] = Vec::dot_pairs(acc0[r], av, b0);
        acc1[r] = Vec::dot_pairs(acc1[r], av, b1);
      }
    }
  }

  // dst[r * dst_row_stride + j * dst_column_stride] = acc[r][j] (+ bias[j])
  // for j < columns; bias may be null.
  void store(float* dst, int64_t dst_row_stride, int64_t dst_column_stride, const float* bias, int columns) const {
    if (bias == nullptr && columns == kColumns && dst_column_stride == 1) {
      for (int r = 0; r < R; ++r) {
        Vec::store(dst + r * dst_row_stride, acc0[r]);
        Vec::store(dst + r * dst_row_stride + kLanes, acc1[r]);
      }
      return;
    }
    const int valid0 = std::min(columns, kLanes);
    const int valid1 = std::max(0, columns - kLanes);
    Reg b0 = Vec::zero(), b1 = Vec::zero();
    if (bias != nullptr) {
      b0 = Vec::load_partial(bias, valid0);
      b1 = Vec::load_partial(bias + kLanes, valid1);
    }
    for (int r = 0; r < R; ++r) {
      store_lanes<Vec>(dst + r * dst_row_stride, dst_column_stride, Vec::add(acc0[r], b0), valid0);
      store_lanes<Vec>(dst + r * dst_row_stride + kLanes * dst_column_stride, dst_column_stride,
                       Vec::add(acc1[r], b1), valid1);
    }
  }
};

} // namespace miniplaces_ext::cpu
