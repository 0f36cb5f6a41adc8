// The register block shared by the direct and Winograd kernels: R rows x
// 2*kLanes columns of float32 accumulators, updated by a rank-1 product per
// step of the reduction (two weight-vector loads, R broadcasts, 2R FMAs).
//
// Include only after the vector traits (vec_<isa>.h), inside the same target
// pragma, so that it is compiled for that ISA alone.
#pragma once

#include <algorithm>
#include <cstdint>

namespace miniplaces_ext::cpu {

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

  // dst[r * dst_row_stride + j] = acc[r][j] (+ bias[j]) for j < columns;
  // bias may be null.
  void store(float* dst, int64_t dst_row_stride, const float* bias, int columns) const {
    if (bias == nullptr && columns == kColumns) {
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
      Vec::store_partial(dst + r * dst_row_stride, Vec::add(acc0[r], b0), valid0);
      Vec::store_partial(dst + r * dst_row_stride + kLanes, Vec::add(acc1[r], b1), valid1);
    }
  }
};

} // namespace miniplaces_ext::cpu
