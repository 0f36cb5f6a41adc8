// Every CPU kernel template (direct_conv_kernel.h, winograd_kernel.h, fma_peak.h, max_pool_kernel.h; the direct kernel
// also on emulated bfloat16 pairs, vec_bf16_pairs.h, and on emulated tiles, tiles_emulated.h) instantiated for
// any CPU, with the vector traits of vec_portable.h (GCC/Clang vector extensions: no target-
// specific code). Everything outside the target region is included first, so that the pragma
// applies to the kernels alone (inline library code compiled for AVX could otherwise leak to other
// callers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <utility>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>  // weight_grad_tiles.h's 8 x 8 transposes: x86-64's baseline
#endif

#include "../plan.h"
#include "../layout.h"
#include "vec_portable.h"
#include "vec_bf16_pairs.h"
#include "tiles_emulated.h"
#include "direct_conv_kernel.h"
#include "winograd_kernel.h"
#include "weight_grad_kernel.h"
#include "weight_grad_tiles.h"
#include "grad_input_tiles.h"
#include "fma_peak.h"
#include "max_pool_kernel.h"

namespace miniplaces_ext::cpu {

const IsaKernels& portable_kernels() {
  static constexpr IsaKernels kKernels{&DirectConv<Portable>::run, &WinogradConv<Portable>::run,
                                        &DirectConv<EmulatedBf16Pairs<Portable>, uint16_t>::run, &WeightGrad<Portable>::run,
                                        &FmaPeak<Portable>::gflops,
                                        &MaxPoolNhwc<float>::run, &MaxPoolNhwc<uint16_t>::run};
  return kKernels;
}

TileKernels emulated_tile_kernels() {
  using Conv = DirectConv<TileTraits<EmulatedTiles>, uint16_t>;
  return {&Conv::run, &Conv::run_lowered, &TileWeightGrad<EmulatedTiles>::run,
          &TileWeightGrad<EmulatedTiles>::run_lowered, &TileGradInputLowered<EmulatedTiles>::run};
}

} // namespace miniplaces_ext::cpu
