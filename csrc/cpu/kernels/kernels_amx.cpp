// The direct kernel on bfloat16 pairs with AMX tiles (tile_block.h, tiles_amx.h), compiled for
// AMX-TILE and AMX-BF16 by a target pragma (never -march). the plan (plan.cpp) takes it only where
// the CPU has AMX-BF16 and the OS has granted the tile state (has_amx_bf16()). x86-64 builds only.
#if defined(__x86_64__)

// Everything outside the target region is included first, so that the pragma applies to the
// kernel alone.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#include <immintrin.h>

#include "../plan.h"  // and conv.h, kernel_table.h: their inline functions compiled for the baseline
#include "../layout.h"

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

#include "vec_avx512.h"
#include "vec_avx512_bf16.h"
#include "tiles_amx.h"
#include "direct_conv_kernel.h"
#include "weight_grad_tiles.h"
#include "grad_input_tiles.h"

namespace miniplaces_ext::cpu {

TileKernels amx_tile_kernels() {
  using Conv = DirectConv<TileTraits<AmxTiles, Avx512Bf16>, uint16_t>;
  return {&Conv::run, &Conv::run_lowered, &TileWeightGrad<AmxTiles>::run,
          &TileWeightGrad<AmxTiles>::run_lowered, &TileGradInputLowered<AmxTiles>::run};
}

} // namespace miniplaces_ext::cpu

#pragma GCC pop_options

#endif // __x86_64__
