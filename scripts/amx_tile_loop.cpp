// The direct kernel's AMX inner loop alone: what a tile product costs, and what storing the
// accumulators at each block's end costs, on this CPU.
//
//   g++ -O2 -mamx-tile -mamx-bf16 scripts/amx_tile_loop.cpp -o /tmp/amx_tile_loop
//   /tmp/amx_tile_loop [cin kernel width panels]      # default: AlexNet's 5x5, 64 -> 192 at 31 px
//
// One thread runs 2 x 2 blocks of tiles as DirectConv's TileBlock does, in its order (two A tiles
// of `width` output pixels, 16 + the rest, from `kernel` rows of zero-padded NHWC input with `cin` channels;
// two B tiles of 32 output channels from `panels` packed panels of [kernel * kernel * cin / 2][32][2];
// four float32 accumulators), every panel over the same pixels, as a row of the blocks-inner loop.
// It prints ns per tile product for three ways of ending a block:
//   end          store the four accumulators after the block's last products, zero them before
//                the next block's first (the kernel's way)
//   interleaved  store C00 and C01 right after their last products, C10 and C11 right before their
//                first products of the next block (oneDNN's AMX brgemm kernel interleaves its stores so)
//   none         zeroed but never stored: the loop's bound
// The operands are 1.0 (bfloat16 0x3f80): a denormal pattern runs faster on some CPUs.
// Measuring code only: nothing in the extension includes it.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

enum class Ending { end, interleaved, none };

// Tiles: C00 = tmm0 (A0 x B0), C01 = tmm1 (A0 x B1), C10 = tmm2 (A1 x B0), C11 = tmm3 (A1 x B1),
// A0 = tmm4, A1 = tmm5, B0 = tmm6, B1 = tmm7.
double ns_per_product(int cin, int kernel, int width, int panels, Ending ending) {
  const int rows1 = width - 16, in_width = width + kernel - 1;
  TileConfig cfg;
  const int rows[8] = {16, 16, rows1, rows1, 16, rows1, 16, 16};
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(rows[t]);
    cfg.bytes_per_row[t] = 64;
  }
  _tile_loadconfig(&cfg);
  const int64_t steps = int64_t{kernel} * kernel * cin / 32, pixel_bytes = int64_t{cin} * 2;
  std::vector<uint16_t> input(static_cast<size_t>(kernel) * in_width * cin + 64, 0x3f80);
  std::vector<uint16_t> weight(static_cast<size_t>(panels) * steps * 1024, 0x3f80);
  alignas(64) static float out[32 * 32];
  const int blocks = 4000 * panels;
  bool pending = false;  // interleaved: C10 and C11 of the previous block still to store
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const auto start = std::chrono::steady_clock::now();
  for (int blk = 0; blk < blocks; ++blk) {
    const uint16_t* b = weight.data() + static_cast<size_t>(blk % panels) * steps * 1024;
    if (ending != Ending::interleaved) {
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    }
    int64_t step = 0;
    for (int i = 0; i < kernel; ++i) {
      for (int j = 0; j < kernel; ++j) {
        for (int c = 0; c < cin; c += 32, ++step) {
          const char* a0 = reinterpret_cast<const char*>(input.data() + (int64_t{i} * in_width + j) * cin + c);
          const char* a1 = a0 + 16 * pixel_bytes;
          const char* bb = reinterpret_cast<const char*>(b + step * 1024);
          const bool last = ending == Ending::interleaved && step == steps - 1;
          // The kernel's order: each operand loaded right before its first product.
          _tile_loadd(4, a0, pixel_bytes);
          _tile_loadd(6, bb, 128);
          _tile_dpbf16ps(0, 4, 6);
          if (last) {
            _tile_stored(0, out, 128); _tile_zero(0);
          }
          _tile_loadd(5, a1, pixel_bytes);
          if (pending) {
            _tile_stored(2, out + 512, 128); _tile_zero(2);
          }
          _tile_dpbf16ps(2, 5, 6);
          _tile_loadd(7, bb + 64, 128);
          _tile_dpbf16ps(1, 4, 7);
          if (last) {
            _tile_stored(1, out + 16, 128); _tile_zero(1);
          }
          if (pending) {
            _tile_stored(3, out + 528, 128); _tile_zero(3);
            pending = false;
          }
          _tile_dpbf16ps(3, 5, 7);
          pending = pending || last;
        }
      }
    }
    if (ending == Ending::end) {
      _tile_stored(0, out, 128); _tile_stored(1, out + 16, 128);
      _tile_stored(2, out + 512, 128); _tile_stored(3, out + 528, 128);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  _tile_release();
  return seconds / (static_cast<double>(blocks) * steps * 4) * 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr long kArchRequestXcompPerm = 0x1023, kXfeatureTileData = 18;
  if (syscall(SYS_arch_prctl, kArchRequestXcompPerm, kXfeatureTileData) != 0) {
    std::fprintf(stderr, "amx_tile_loop: the kernel does not grant AMX tile data to this process\n");
    return 1;
  }
  const int cin = argc > 1 ? std::atoi(argv[1]) : 64, kernel = argc > 2 ? std::atoi(argv[2]) : 5;
  const int width = argc > 3 ? std::atoi(argv[3]) : 31, panels = argc > 4 ? std::atoi(argv[4]) : 6;
  if (cin <= 0 || cin % 32 != 0 || kernel <= 0 || width < 17 || width > 32 || panels <= 0) {
    std::fprintf(stderr, "usage: amx_tile_loop [cin (a multiple of 32) kernel width (17-32) panels]\n");
    return 2;
  }
  std::printf("cin %d, %dx%d, %d pixels, %d panels (%lld products a block): ns per tile product\n", cin, kernel,
              kernel, width, panels, static_cast<long long>(kernel) * kernel * cin / 32 * 4);
  for (int round = 0; round < 3; ++round) {
    std::printf("  end %.2f  interleaved %.2f  none %.2f\n", ns_per_product(cin, kernel, width, panels, Ending::end),
                ns_per_product(cin, kernel, width, panels, Ending::interleaved),
                ns_per_product(cin, kernel, width, panels, Ending::none));
  }
  return 0;
}
