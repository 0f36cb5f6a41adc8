// The weight transform of Winograd F(4x4, 3x3) (winograd_kernel.h), shared by
// every ISA level: U = G w G^T per (output, input) channel pair, in float64,
// rounded once to float32 and written straight into the packed layout.
#include "winograd_kernel.h"

#include <ATen/Parallel.h>

namespace miniplaces_ext::cpu {
namespace {

// G of F(4, 3) for the interpolation points 0, 1, -1, 2, -2 and infinity.
constexpr double kG[6][3] = {
    {1.0 / 4, 0.0, 0.0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0.0, 0.0, 1.0},
};

} // namespace

at::Tensor winograd_transform_weight(const at::Tensor& weight, int64_t block_width) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.scalar_type() == at::kFloat,
              "Winograd weight transform: expected a float32 [Cout, Cin, 3, 3] weight, got ",
              weight.scalar_type(), " ", weight.sizes());
  const at::Tensor w = weight.contiguous();
  const int64_t cout = w.size(0), cin = w.size(1);
  const int64_t blocks = (cout + block_width - 1) / block_width;
  // [36][blocks][Cin][block_width]; output channels past Cout stay zero.
  at::Tensor u = cout % block_width == 0 ? at::empty({36, blocks, cin, block_width}, w.options())
                                         : at::zeros({36, blocks, cin, block_width}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = u.mutable_data_ptr<float>();
  at::parallel_for(0, cout, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      const int64_t blk = co / block_width, lane = co % block_width;
      for (int64_t ci = 0; ci < cin; ++ci) {
        const float* k = src + (co * cin + ci) * 9;
        double gk[6][3];  // G k
        for (int i = 0; i < 6; ++i) {
          for (int j = 0; j < 3; ++j) {
            gk[i][j] = kG[i][0] * k[j] + kG[i][1] * k[3 + j] + kG[i][2] * k[6 + j];
          }
        }
        for (int i = 0; i < 6; ++i) {  // (G k) G^T
          for (int j = 0; j < 6; ++j) {
            const double v = gk[i][0] * kG[j][0] + gk[i][1] * kG[j][1] + gk[i][2] * kG[j][2];
            dst[(((i * 6 + j) * blocks + blk) * cin + ci) * block_width + lane] = static_cast<float>(v);
          }
        }
      }
    }
  });
  return u;
}

} // namespace miniplaces_ext::cpu
