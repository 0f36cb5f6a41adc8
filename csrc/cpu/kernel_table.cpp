// The one table of CPU kernel entries (kernel_table.h).
#include "kernel_table.h"

#include <ATen/ATen.h>

namespace miniplaces_ext::cpu {

const IsaKernels& KernelTable::level(Isa isa) const {
  const IsaKernels* k = levels[static_cast<int>(isa)];
  TORCH_CHECK(k != nullptr, "CPU kernels: level ", isa_name(isa), " is not compiled into this build");
  return *k;
}

const KernelTable& kernel_table() {
#if defined(__x86_64__)
  static const KernelTable table{{&portable_kernels(), &avx2_kernels(), &avx512_kernels()},
                                 amx_tile_kernels(),
                                 emulated_tile_kernels(),
                                 avx512_bf16_pairs_direct()};
#else
  static const KernelTable table{{&portable_kernels(), nullptr, nullptr}, {}, emulated_tile_kernels(), nullptr};
#endif
  return table;
}

void check_output(const at::Tensor& out, const ConvGeometry& g, bool bf16_allowed) {
  TORCH_CHECK((out.scalar_type() == at::kFloat || (bf16_allowed && out.scalar_type() == at::kBFloat16)) &&
                  out.sizes() == at::IntArrayRef({g.batch, g.out_channels, g.out_h, g.out_w}),
              "NHWC conv kernels: expected a float32", bf16_allowed ? " or bfloat16" : "", " [", g.batch, ", ",
              g.out_channels, ", ", g.out_h, ", ", g.out_w, "] output, got ", out.scalar_type(), " ", out.sizes());
}

} // namespace miniplaces_ext::cpu
