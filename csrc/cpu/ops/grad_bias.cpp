// The bias gradient on the CPU: per-channel sums of grad_output, in an order fixed by the shape
// alone (results do not depend on the number of threads).
#include "passes.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace miniplaces_ext::cpu {
namespace {

// out[c] = sum over rows of m[rows, cols] (the bias gradient), accumulated in
// the op-math type. Work is split over (row chunk, column block) so every
// thread has some even when there are few columns; chunk partial sums are then
// added in chunk order. The chunking is fixed, so results do not depend on the
// number of threads.
template <typename scalar_t>
void column_sums(const scalar_t* m, scalar_t* out, int64_t rows, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kBlock = 16;
  constexpr int64_t kRowChunk = 2048;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  const int64_t chunks = std::max<int64_t>(1, (rows + kRowChunk - 1) / kRowChunk);
  std::vector<acc_t> partial(chunks * cols);
  at::parallel_for(0, chunks * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task / blocks, c0 = (task % blocks) * kBlock;
      const int64_t width = std::min(kBlock, cols - c0);
      acc_t acc[kBlock] = {};
      for (int64_t r = chunk * kRowChunk; r < std::min(rows, (chunk + 1) * kRowChunk); ++r) {
        const scalar_t* row = m + r * cols + c0;
        for (int64_t c = 0; c < width; ++c) {
          acc[c] += static_cast<acc_t>(row[c]);
        }
      }
      std::copy_n(acc, width, partial.begin() + chunk * cols + c0);
    }
  });
  at::parallel_for(0, cols, kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc_t sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        sum += partial[chunk * cols + c];
      }
      out[c] = static_cast<scalar_t>(sum);
    }
  });
}

// out[c] = sum over n, p of dy[n * image_stride + c * channel_stride + p] for p < P (the bias
// gradient of an NCHW grad_output, each (n, c) one contiguous run of P pixels), accumulated in
// the op-math type: eight interleaved partial sums per run, added up run by run in image order.
// Channels are split over threads, so results do not depend on their number.
template <typename scalar_t>
void plane_sums(const scalar_t* dy, int64_t image_stride, int64_t channel_stride, scalar_t* out, int64_t N,
                int64_t C, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kLanes = 8;
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc_t total = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* run = dy + n * image_stride + c * channel_stride;
        acc_t lanes[kLanes] = {};
        int64_t p = 0;
        for (; p + kLanes <= P; p += kLanes) {
          for (int64_t k = 0; k < kLanes; ++k) {
            lanes[k] += static_cast<acc_t>(run[p + k]);
          }
        }
        for (; p < P; ++p) {
          lanes[p % kLanes] += static_cast<acc_t>(run[p]);
        }
        for (int64_t k = 0; k < kLanes; ++k) {
          total += lanes[k];
        }
      }
      out[c] = static_cast<scalar_t>(total);
    }
  });
}

} // namespace

at::Tensor grad_bias(GradOutput& grad_output, const ConvGeometry& g) {
  const at::Tensor& dy = grad_output.computed();
  at::Tensor out = at::empty({g.out_channels}, dy.options());
  const bool planes = dy.stride(3) == 1 && dy.stride(2) == g.out_w;  // NCHW: each (n, c) one contiguous run
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "miniplaces_bias_grad", [&] {
    if (planes) {
      plane_sums<scalar_t>(dy.const_data_ptr<scalar_t>(), dy.stride(0), dy.stride(1), out.mutable_data_ptr<scalar_t>(),
                           g.batch, g.out_channels, g.out_pixels());
    } else {
      const at::Tensor& rows = grad_output.pixels();
      column_sums<scalar_t>(rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows.size(0),
                            g.out_channels);
    }
  });
  return out;
}

} // namespace miniplaces_ext::cpu
