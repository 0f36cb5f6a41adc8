// The weight gradient on the CPU: bfloat16 tile products, the float32 weight-gradient kernel, or
// dW += dy^T @ im2col(x) as GEMMs in fixed tiles, as the plan says.
#include "passes.h"

#include "../gemm_columns.h"
#include "../layout.h"
#include "../plan.h"
#include "../run_plan.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace miniplaces_ext::cpu {
namespace {

// dw += a^T @ b for a [K, M], b [K, N] and dw [M, N], as fixed 64 x 256 tiles of dw over torch's
// threads, each tile one GEMM on one thread (inside a parallel region MKL runs single-threaded):
// the same products summed in the same order whatever the number of threads. MKL's own
// threading splits a long reduction by the thread count, which gave other grad_weight bits on 1
// than on 2 threads with MKL's AVX-512 sgemm on an Intel Xeon.
void add_transposed_product(at::Tensor& dw, const at::Tensor& a, const at::Tensor& b) {
  constexpr int64_t kTileRows = 64, kTileColumns = 256;
  const int64_t m = dw.size(0), n = dw.size(1);
  const int64_t row_tiles = (m + kTileRows - 1) / kTileRows, column_tiles = (n + kTileColumns - 1) / kTileColumns;
  at::parallel_for(0, row_tiles * column_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = (task / column_tiles) * kTileRows, c0 = (task % column_tiles) * kTileColumns;
      const int64_t rows = std::min(kTileRows, m - r0), columns = std::min(kTileColumns, n - c0);
      at::Tensor tile = dw.narrow(0, r0, rows).narrow(1, c0, columns);
      const at::Tensor a_tile = a.narrow(1, r0, rows).t(), b_tile = b.narrow(1, c0, columns);
      if (dw.scalar_type() == b.scalar_type()) {
        tile.addmm_(a_tile, b_tile);
      } else {
        tile.add_(at::mm(a_tile, b_tile));
      }
    }
  });
}

// dW[group] += dy[rows, group]^T @ col[rows, group], in runs of rows small enough to stay in
// cache, in tiles independent of the thread count; the sum is accumulated in the op-math type.
at::Tensor grad_weight_by_gemm(const at::Tensor& x, GradOutput& dy, const ConvGeometry& g,
                               at::ScalarType dtype, int64_t column_bytes) {
  const int64_t coutg = g.out_channels_per_group();
  const int64_t cg = g.in_channels_per_group();
  const auto acc_type = at::toOpMathType(dtype);
  at::Tensor dw = at::zeros({g.out_channels, g.patch_size()}, x.options().dtype(acc_type));
  const int64_t total = g.batch * g.out_pixels();
  const int64_t chunk_rows = g.samples_pixels() ? std::max<int64_t>(total, 1)
                                                : weight_grad_rows(g, dy.pixels().element_size(), column_bytes);
  ColumnSource source(x, g, chunk_rows);
  for (int64_t row0 = 0; row0 < total; row0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, total - row0);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const at::Tensor dy_g = dy.pixels().narrow(0, row0, rows).narrow(1, grp * coutg, coutg);
      const at::Tensor col = source.columns(row0, rows, grp);
      at::Tensor dw_g = dw.narrow(0, grp * coutg, coutg);
      add_transposed_product(dw_g, dy_g, col);
    }
  }
  return dw.view({g.out_channels, g.kernel_h, g.kernel_w, cg}).permute({0, 3, 1, 2}).to(dtype).contiguous();
}

} // namespace

at::Tensor grad_weight(const CpuOptions& options, const at::Tensor& input, GradOutput& dy, const ConvGeometry& g,
                       bool widen) {
  const ConvPlan plan = plan_weight_grad(options, g, input.scalar_type());
  switch (plan.weight_grad) {
    case WeightGradMethod::tiles:
      return run_weight_grad(plan, input, dy.given());  // bfloat16 operands, float32 sums
    case WeightGradMethod::kernel:
      return run_weight_grad(plan, widen ? widened_nhwc(input) : input, dy.computed());
    case WeightGradMethod::gemm:
      break;
  }
  return grad_weight_by_gemm(widen ? input.to(at::kFloat) : input, dy, g, dy.computed().scalar_type(),
                             plan.options.column_bytes);
}

} // namespace miniplaces_ext::cpu
