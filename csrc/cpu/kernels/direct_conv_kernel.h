// The direct convolution in NHWC, written once for every vector ISA, with
// float32 operands or bfloat16 ones (In = uint16_t: their bits) multiplied in
// pairs of input channels; float32 accumulators and output either way.
//
// out[n, oh, ow, co] = bias[co] + sum_{i, j, c} x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c] * W[co, c, i, j]
//
// DirectConv<Vec> is instantiated by one file per ISA level
// (kernels_{portable,avx2,avx512}.cpp), each compiled for its own target,
// with the vector traits of vec_<isa>.h. Every function here is a member of a
// class template over Vec, so the per-ISA instantiations never share a symbol
// (no ODR mix-up between targets).
//
// Zero padding is never materialised: taps outside the input are skipped
// when a whole kernel row is outside; within a row, a pixel block whose tap
// falls partly left or right of the input reads those pixels from a row of
// zeros (one pointer per pixel), so border pixels share the register block
// and the interior blocks have no bounds checks. The weight comes packed per
// group into blocks of
// kBlock = 2 * kLanes output channels, [group][block][kh][kw][Cg][kBlock]
// (pack_direct_weight in packed_weights.cpp); bfloat16 weights as
// [group][block][kh][kw][Cg/2][kBlock][2] (pack_direct_weight_pairs), with Cg
// even (the caller pads an odd channel count with a zero channel).
// One register block (register_block.h) computes R <= kMaxRows consecutive
// output pixels x kBlock channels; per kernel tap it is a rank-Cg update. A
// trait naming a tile unit (TileTraits, tile_block.h: AMX) gets TileBlock
// instead, with the same interface: up to 32 pixels x 32 channels of tile sums.
// Work is split over output rows (and channel blocks when the weight is
// large), ordered so that the smaller operand stays in cache. The input is
// read in place when it is NHWC, else laid out row by row as each thread
// reaches it (InputRows); the output is written through its strides (NHWC or
// NCHW, no conversion afterwards). Each output element is written by one
// thread, so results do not depend on the thread count.
//
// Include this header only after <ATen/ATen.h>, <ATen/Parallel.h>, <algorithm>
// and the vector traits, so that a target pragma around it applies to this code alone.
#pragma once

#include "../../conv.h"
#include "aligned_vector.h"
#include "input_rows.h"
#include "../layout.h"
#include "register_block.h"
#include "tile_block.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace miniplaces_ext::cpu {

// The accumulator block of R pixels: vector registers, or tiles where the trait names a tile unit.
template <typename Vec, int R, typename = void>
struct AccumulatorBlock {
  using type = RegisterBlock<Vec, R>;
};
template <typename Vec, int R>
struct AccumulatorBlock<Vec, R, std::void_t<typename Vec::Tiles>> {
  using type = TileBlock<typename Vec::Tiles, R>;
};

// What a thread holds while it runs blocks: the tile unit's run (TileRun: configured once, released
// at the end) where the blocks are tiles; nothing for vector registers.
template <typename Vec, typename = void>
struct BlockRun {};
template <typename Vec>
struct BlockRun<Vec, std::void_t<typename Vec::Tiles>> {
  TileRun<typename Vec::Tiles> run;
};

// The vector traits that finish a block's 32 bfloat16 outputs per pixel (load_bf16, store_bf16:
// vec_avx512_bf16.h): Vec itself, or a tile trait's Vector; void where there are none.
template <typename Vec, typename = void>
struct FinishVector {
  using type = void;
};
template <typename Vec>
struct FinishVector<Vec, std::void_t<decltype(Vec::store_bf16(nullptr, Vec::zero(), Vec::zero()))>> {
  using type = Vec;
};
template <typename Vec>
struct FinishVector<Vec, std::void_t<typename Vec::Vector>> {
  using type = typename Vec::Vector;
};

template <typename Vec, typename In = float>
struct DirectConv {
  static_assert(std::is_same_v<In, float> || std::is_same_v<In, uint16_t>, "float32 or bfloat16 bits");
  static constexpr bool kPairs = std::is_same_v<In, uint16_t>;  // Vec has vec_bf16_pairs.h's interface
  static constexpr int64_t kBlock = 2 * Vec::kLanes;
  static constexpr int kMaxRows = Vec::kMaxRows;
  static constexpr bool kTiles = requires { typename Vec::Tiles; };
  // A group's packed weight up to this size is kept in cache across output rows.
  static constexpr int64_t kWeightInCacheBytes = int64_t{2} << 20;

  struct Args {
    const In* x;          // input [N, C, H, W], addressed through x_strides
    Strides4 x_strides;
    const In* weight;     // packed [groups][blocks][kh][kw][Cg][kBlock] (pairs: [..][Cg/2][kBlock][2])
    const float* bias;    // [Cout] or nullptr
    const In* zeros;      // zeros: what a pixel left or right of the input reads (Cg), and a whole
                          // zero-padded input row (paired_kernel)
    float* out;           // [N, Cout, Ho, Wo] in any layout, addressed through out_strides; or
    c10::BFloat16* out_bf16;  // the output in bfloat16 (one of the two is null)
    Strides4 out_strides;
    const ConvGeometry& g;
    int64_t blocks;       // register blocks per group
    const OutputEpilogue& epilogue;  // + residual, ReLU: applied to each row before it is written
  };

  // Finishes output pixels [ow0, ow0 + count) of row (n, oh), channels [co, co + columns), from
  // their float32 sums src[(ow - ow0) * src_pixel_stride + j] + bias[j] (zeros without one): a
  // bfloat16 NHWC output (finish_bf16_pixels); `first` is the offset of the row's element (0, co)
  // in the output.
  using FinishPixels = void (*)(const Args& a, const float* src, int64_t src_pixel_stride, const float* bias,
                                int64_t columns, int64_t n, int64_t oh, int64_t co, int64_t ow0, int64_t count,
                                int64_t first);

  // A thread's blocks finished one block late, where the output is bfloat16 NHWC (one_pass_finish):
  // each block's sums are stored to a scratch in L1 and finished (bias, residual, ReLU, one
  // rounding, stored) a slice of pixels every kProductsPerSlice tile products of the next block,
  // so that the vector unit finishes one block while the tile unit multiplies the next (as oneDNN's AMX
  // brgemm kernels interleave their tile stores), and no load waits on sums the tiles have only
  // just stored. The rows' sums never make a second pass through a row buffer.
  class BlockFinisher {
   public:
    BlockFinisher(const Args& a, FinishPixels finish) : a_(a), finish_(finish) {}
    ~BlockFinisher() { flush(); }
    BlockFinisher(const BlockFinisher&) = delete;
    BlockFinisher& operator=(const BlockFinisher&) = delete;

    // Tile products per slice of finishing: a slice (and its call, and its pixels' positions) every
    // fourth product instead of after each. bf16, channels_last, Xeon, one process alternating,
    // time against a slice after each product: AlexNet's 5x5 0.93, its 3x3 192 -> 384 0.93,
    // ResNet-18 layer1 3x3 0.92 (every second product 0.96 / 0.96 / 0.94, every eighth 0.95 / 0.95
    // / 0.96; not finishing at all 0.94 / 0.94 / 0.93).
    static constexpr int kProductsPerSlice = 4;

    // Before a block of `products` tile products: the pending block's pixels are spread over them,
    // a slice every kProductsPerSlice products.
    void pace(int64_t products) {
      const int64_t left = pending_.count - done_;
      const int64_t slices = std::max<int64_t>(1, products / kProductsPerSlice);
      slice_ = (left + slices - 1) / slices;
      countdown_ = kProductsPerSlice;
    }

    // After one tile product: every kProductsPerSlice, the next slice of the pending block, and a few
    // lines asked for ahead.
    void step() {
      if (--countdown_ > 0) {
        return;
      }
      countdown_ = kProductsPerSlice;
      if (done_ < pending_.count) {
        finish_pixels(std::min(slice_, pending_.count - done_));
      }
      constexpr int kAheadLines = 4 * kProductsPerSlice;
      for (int i = 0; i < kAheadLines && ahead_ < ahead_end_; ++i, ahead_ += kCacheLineBytes) {
        __builtin_prefetch(ahead_, 0, 3);
      }
    }

    // Memory [p, p + bytes) the next rows will read (the next output row's new input rows): asked
    // for a few lines at each slice (step), so that it arrives from memory while the tiles compute
    // instead of stalling the row's layout (InputRows) afterwards. Measured on layer1 with buffers
    // out of cache, as in a network: 4.44 -> 4.13 ms.
    void ahead(const void* p, int64_t bytes) {
      ahead_ = static_cast<const char*>(p);
      ahead_end_ = ahead_ + bytes;
    }

    // Finishes what is left of the pending block, then stores `acc` (R pixels from ow0 of row
    // (n, oh), `columns` channels from col) as the pending one. A block may span rows
    // (paired_kernel, lowered_columns_kernel), and images (paired_kernel): pixel r of the block is
    // pixel ow0 + r of the output's rows taken in order, row after row and image after image.
    template <int R, typename Acc>
    void push(const Acc& acc, int64_t n, int64_t oh, int64_t col, int64_t ow0, int columns) {
      flush();
      acc.store(sums_, kBlock, 1, nullptr, columns);
      pending_ = Pending{n * a_.g.out_h + oh, col, ow0, R, columns};
    }

    // Finishes what is left of the pending block.
    void flush() {
      if (done_ < pending_.count) {
        finish_pixels(pending_.count - done_);
      }
      pending_.count = 0;
      done_ = 0;
    }

   private:
    // Finishes the pending block's next `count` pixels, row by row.
    void finish_pixels(int64_t count) {
      static constexpr float kNoBias[kBlock] = {};  // one loop with or without a bias: one_pass_finish
      const Pending& p = pending_;
      const ConvGeometry& g = a_.g;
      const Strides4& s = a_.out_strides;
      const float* bias = a_.bias != nullptr ? a_.bias + p.col : kNoBias;
      while (count > 0) {
        const int64_t v = p.ow0 + done_, row = p.row + v / g.out_w, ow = v % g.out_w;
        const int64_t n = row / g.out_h, oh = row % g.out_h;
        const int64_t part = std::min(count, g.out_w - ow);
        finish_(a_, sums_ + done_ * kBlock, kBlock, bias, p.columns, n, oh, p.col, ow, part,
                n * s.n + oh * s.h + p.col * s.c);
        done_ += part;
        count -= part;
      }
    }

    struct Pending {
      int64_t row = 0, col = 0, ow0 = 0, count = 0, columns = 0;  // row: n * out_h + oh
    };
    const Args& a_;
    FinishPixels finish_;
    Pending pending_;
    int64_t done_ = 0, slice_ = 0;  // pixels of the pending block finished; pixels per slice
    int countdown_ = kProductsPerSlice;  // products until the next slice
    const char* ahead_ = nullptr;
    const char* ahead_end_ = nullptr;
    alignas(64) float sums_[kMaxRows * kBlock];  // the pending block's sums
  };

  // Where one output row of one group goes: element (ow, co) of the row,
  // co counted within the group, at row[ow * pixel_stride + co * channel_stride]; or, where
  // `finisher` is set, to the thread's BlockFinisher block by block.
  struct RowDestination {
    float* row;
    int64_t pixel_stride, channel_stride;
    BlockFinisher* finisher = nullptr;
    int64_t n = 0, oh = 0;

    // The destination of output row (n, oh) whose blocks go to `finisher`.
    static RowDestination finished(BlockFinisher& finisher, int64_t n, int64_t oh) {
      return RowDestination{nullptr, 0, 0, &finisher, n, oh};
    }
  };

  // Whether a group's packed weight is too large to stay in cache across output rows.
  static bool weight_is_large(const ConvGeometry& g, int64_t blocks) {
    return blocks * panel_bytes(g) > kWeightInCacheBytes;
  }

  // Bytes of one packed panel of the weight: kBlock output channels of a group over its patch.
  static int64_t panel_bytes(const ConvGeometry& g) {
    return kBlock * g.patch_size() * static_cast<int64_t>(sizeof(In));
  }

  // Rows of the per-thread input cache: every row of an image when a large weight runs image
  // by image (below); else the rows of two consecutive output rows.
  static int64_t cached_input_rows(const ConvGeometry& g, int64_t blocks) {
    const int64_t two_output_rows = (g.kernel_h - 1) * g.dilation_h + 1 + g.stride_h;
    return weight_is_large(g, blocks) ? g.in_h : std::min(g.in_h, two_output_rows);
  }

  // Zero positions needed after the input's `in` along one dimension so that every tap of every
  // one of `out` outputs reads inside the padded input.
  static int64_t trailing_padding(int64_t out, int64_t stride, int64_t pad, int64_t kernel, int64_t dilation,
                                  int64_t in) {
    return std::max<int64_t>(0, (out - 1) * stride - pad + (kernel - 1) * dilation - (in - 1));
  }

  // Zero pixels a laid-out input row needs left and right so that every tap of every output
  // pixel reads inside it.
  static std::pair<int64_t, int64_t> row_padding(const ConvGeometry& g) {
    return {g.pad_w, trailing_padding(g.out_w, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.in_w)};
  }

  // Whether the input rows are laid out with zero padding (InputRows), so that border pixels read
  // zeros a fixed stride apart like the rest, where the padded rows fit the per-thread cache: for
  // tiles always, whose A operand is one strided load (else border pixels would go through the
  // staging tile on most taps: a 32-pixel row with padding 1 has no interior block); for vector
  // registers where the rows are laid out anyway (`laid_out`: an input not readable in place),
  // or where a border run's per-tap reductions would be short (few channels: AlexNet's 11x11/4
  // on 3 channels has border pixels in 2 of its 3 runs per row; channels_last 4.7 -> 4.2 ms), so
  // that border runs take the one-run-per-kernel-row path too.
  static bool padded_rows(const ConvGeometry& g, int64_t blocks, bool laid_out) {
    constexpr int64_t kFewChannels = 16;
    const auto [left, right] = row_padding(g);
    return (kTiles || laid_out || g.in_channels < kFewChannels) && g.groups == 1 && left + right > 0 &&
        InputRows<In>::cache_bytes(g, cached_input_rows(g, blocks), left + right) <= kInputRowCacheBytes;
  }

  template <int R>
  using Block = typename AccumulatorBlock<Vec, R>::type;

  // `pixels` in runs of near-equal length <= kMaxRows (16 -> 6, 5, 5 where kMaxRows is 6), so
  // that every run is one accumulator block and no tail needs masking.
  struct PixelRuns {
    int64_t count, base, longer;  // runs; the first `longer` have base + 1 pixels, the rest base
    explicit PixelRuns(int64_t pixels)
        : count((pixels + kMaxRows - 1) / kMaxRows),
          base(count > 0 ? pixels / count : 0),
          longer(count > 0 ? pixels % count : 0) {}
    int64_t length(int64_t run) const { return base + (run < longer ? 1 : 0); }
  };

  // How one step of the reduction multiplies (float32 FMAs or bfloat16 pairs), and how many
  // reduction elements it takes.
  using Steps = std::conditional_t<kPairs, Bf16PairSteps<Vec>, Float32Steps<Vec>>;
  static constexpr int64_t kStepWidth = kPairs ? 2 : 1;

  // Tile products in `runs` reductions of `depth` elements each (TileBlock: 16 pairs a product).
  static int64_t tile_products(int64_t runs, int64_t depth) {
    constexpr int64_t kDepth = 32;
    return runs * ((depth + kDepth - 1) / kDepth);
  }

  // acc (a Block) += the rank-`depth` product of its R input rows (StridedRows
  // or PointerRows) and a packed weight panel; depth is even for pairs. Tile blocks call
  // `finisher`'s step after each product (BlockFinisher); kPrefetch: whether they ask for the panel's
  // rows ahead (TileBlock::prefetch_b).
  template <bool kPrefetch = true, typename Acc, typename Rows>
  static void reduce(Acc& acc, const Rows& rows, const In* b, int64_t depth, BlockFinisher* finisher = nullptr) {
    if constexpr (kTiles) {
      acc.template accumulate<Steps, kPrefetch>(rows, b, kStepWidth * kBlock, depth / kStepWidth, finisher);
    } else {
      acc.template accumulate<Steps>(rows, b, kStepWidth * kBlock, depth / kStepWidth);
    }
  }

  // R output pixels starting at ow0. With kCheckColumns, taps left or right of
  // the input read zeros; otherwise all columns must be inside.
  // xrows: the kernel rows' input rows of the output row, from the group's first channel
  // (InputRows::rows).
  template <int R, bool kCheckColumns>
  static void micro_kernel(const Args& a, const In* const* xrows, int64_t grp, int64_t blk, int64_t ow0,
                           const RowDestination& d) {
    const ConvGeometry& g = a.g;
    const int64_t cg = g.in_channels_per_group();
    Block<R> acc;
    const int64_t pixel_step = g.stride_w * g.in_channels;
    const In* wblock = a.weight + (grp * a.blocks + blk) * g.kernel_h * g.kernel_w * cg * kBlock;
    // With one group and undilated columns, the kw taps of a kernel row read
    // kw consecutive pixels: one contiguous run of kw * Cg inputs against the
    // contiguous [kw][Cg] weight rows, a single rank-(kw * Cg) update.
    const bool row_is_one_run = g.groups == 1 && g.dilation_w == 1;
    const int64_t first_iw = ow0 * g.stride_w - g.pad_w;  // input column of the first pixel's first tap
    const bool row_inside = !kCheckColumns ||
        (first_iw >= 0 && first_iw + (g.kernel_w - 1) + (R - 1) * g.stride_w < g.in_w);
    if (d.finisher != nullptr) {
      d.finisher->pace(row_is_one_run ? tile_products(g.kernel_h, g.kernel_w * cg)
                                      : tile_products(g.kernel_h * g.kernel_w, cg));
    }
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const In* xrow = xrows[i];
      if (xrow == nullptr) {
        continue;
      }
      if (row_is_one_run && row_inside) {
        reduce(acc, StridedRows<In>{xrow + first_iw * g.in_channels, pixel_step},
               wblock + i * g.kernel_w * cg * kBlock, g.kernel_w * cg, d.finisher);
        continue;
      }
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t iw0 = first_iw + j * g.dilation_w;  // input column of the first pixel
        const In* wtap = wblock + (i * g.kernel_w + j) * cg * kBlock;
        if (!kCheckColumns || (iw0 >= 0 && iw0 + (R - 1) * g.stride_w < g.in_w)) {
          reduce(acc, StridedRows<In>{xrow + iw0 * g.in_channels, pixel_step}, wtap, cg, d.finisher);
          continue;
        }
        const In* pixels[R];
        bool any_inside = false;
        for (int r = 0; r < R; ++r) {
          const int64_t iw = iw0 + r * g.stride_w;
          const bool inside = iw >= 0 && iw < g.in_w;
          pixels[r] = inside ? xrow + iw * g.in_channels : a.zeros;
          any_inside = any_inside || inside;
        }
        if (any_inside) {
          reduce(acc, PointerRows<In, R>{pixels}, wtap, cg, d.finisher);
        }
      }
    }
    const int64_t co0 = blk * kBlock;  // first output channel of the block within the group
    const int columns = static_cast<int>(std::min<int64_t>(kBlock, g.out_channels_per_group() - co0));
    store_block<R>(a, acc, d, ow0, co0, grp * g.out_channels_per_group() + co0, columns);
  }

  // Stores block `acc` (R pixels from ow0, `columns` channels from co0 of the destination's group,
  // col in the whole output): with the bias to the destination row, or to its BlockFinisher.
  template <int R, typename Acc>
  static void store_block(const Args& a, const Acc& acc, const RowDestination& d, int64_t ow0, int64_t co0,
                          int64_t col, int columns) {
    if (d.finisher != nullptr) {
      d.finisher->template push<R>(acc, d.n, d.oh, col, ow0, columns);
      return;
    }
    acc.store(d.row + ow0 * d.pixel_stride + co0 * d.channel_stride, d.pixel_stride, d.channel_stride,
              a.bias != nullptr ? a.bias + col : nullptr, columns);
  }

  // Shortest output row computed two at a time (paired_rows): a row fills one A tile at least
  // three quarters (shorter rows are lowered across rows instead: columns_lowered); the longest
  // fills it.
  static constexpr int64_t kMinPairedRow = 12, kMaxPairedRow = 16;
  // Images a task of paired_rows takes: two, so that an image with an odd number of rows pairs its
  // last row with the next image's first (AlexNet's 15-row layers: 15 blocks per two images, not 16).
  static constexpr int64_t kPairedImages = 2;
  // Panels a paired_rows group holds (kPanelGroupBytes' role): 2 MiB, so that AlexNet's 15x15
  // weights (1.2-1.8 MB) make one group and the threads split the images, each reading the
  // images the previous layer's thread wrote (and laying each out once) instead of every image
  // for half of the panels. Whole bf16 AlexNet with our convs (swap_convs), against torch's in
  // the same runs: 0.94-0.99x -> 0.97-1.00x.
  static constexpr int64_t kPairedGroupBytes = int64_t{2} << 20;

  // Whether output rows are computed two at a time as one block (paired_rows): rows of
  // kMinPairedRow to 16 pixels on tiles, read from zero-padded rows (those paired_row_slots keeps
  // within the per-thread row cache), finished block by block.
  static bool paired_rows(const ConvGeometry& g, int64_t blocks, bool padded, bool finished) {
    const auto [left, right] = row_padding(g);
    return kTiles && padded && finished && g.groups == 1 && g.dilation_w == 1 && g.out_w >= kMinPairedRow &&
        g.out_w <= kMaxPairedRow &&
        InputRows<In>::cache_bytes(g, paired_row_slots(g, blocks), left + right) <= kInputRowCacheBytes;
  }

  // A paired_rows weight this small stays in L2 whole (with room for the rows' input): each pair
  // of rows then runs every panel before the next pair, its input rows read from L1 across the
  // panels. A larger one runs panel by panel over a task's rows instead, each panel kept in L2
  // over the rows. ResNet-18's layer2.0 3x3/2 (147 KB), bf16, Xeon: 0.48 ms panels inner, 0.53
  // panel by panel; AlexNet's 3x3 at 15x15 (1.2-1.8 MB) are faster panel by panel (microbenchmark
  // of the loop, one thread: 2.8 / 3.9 / 2.4 ms against 3.2 / 4.7 / 2.4 panels inner).
  static constexpr int64_t kPanelsInnerBytes = int64_t{1} << 19;

  static bool panels_inner(const ConvGeometry& g, int64_t blocks) {
    return blocks * panel_bytes(g) <= kPanelsInnerBytes;
  }

  // Input rows a paired_rows thread keeps: those of one pair of output rows (panels inner; the
  // next pair's rows replace them), else every row of a task's images (read once per panel).
  static int64_t paired_row_slots(const ConvGeometry& g, int64_t blocks) {
    const int64_t pair = 2 * g.stride_h + (g.kernel_h - 1) * g.dilation_h;
    return panels_inner(g, blocks) ? std::min(g.batch * g.in_h, pair) : std::min(kPairedImages, g.batch) * g.in_h;
  }

  // Two output rows of W pixels each as one block of 2 W pixels against panel blk: A0 from the
  // first row's kernel-row inputs x0, A1 from the second's x1 (zero-padded rows, nullptr for a
  // row of zeros; the second row may be the next image's first), so that each pair of B tiles
  // feeds four products instead of two (a block of one row has one A tile). (n, oh): the first row.
  // kPrefetch: the panel's rows asked for ahead (TileBlock::prefetch_b), which helps where each
  // pair runs every panel (panels_inner; the rows' input then stays in L1) and costs where each
  // panel runs over many rows (AlexNet's 3x3 at 15x15: 2.9 -> 2.7 and 3.9 -> 3.6 ms without).
  template <int W, bool kPrefetch>
  static void paired_kernel(const Args& a, const In* const* x0, const In* const* x1, int64_t blk,
                            BlockFinisher& finisher, int64_t n, int64_t oh) {
    const ConvGeometry& g = a.g;
    const int64_t run = g.kernel_w * g.in_channels, lead = g.pad_w * g.in_channels;
    const In* zero_row = a.zeros + lead;
    const In* wblock = a.weight + blk * g.kernel_h * run * kBlock;
    TileBlock<typename Vec::Tiles, 2 * W, W> acc;
    finisher.pace(tile_products(g.kernel_h, run));
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      if (x0[i] == nullptr && x1[i] == nullptr) {
        continue;
      }
      const In* r0 = (x0[i] != nullptr ? x0[i] : zero_row) - lead;
      const In* r1 = (x1[i] != nullptr ? x1[i] : zero_row) - lead;
      reduce<kPrefetch>(acc, SplitRows<In>{r0, r1, g.stride_w * g.in_channels, W}, wblock + i * run * kBlock, run,
                        &finisher);
    }
    const int64_t co0 = blk * kBlock;
    const int columns = static_cast<int>(std::min<int64_t>(kBlock, g.out_channels - co0));
    finisher.template push<2 * W>(acc, n, oh, co0, 0, columns);
  }

  using PairedKernel = void (*)(const Args&, const In* const*, const In* const*, int64_t, BlockFinisher&, int64_t,
                                int64_t);
  using PairedRowLengths = std::make_index_sequence<kMaxPairedRow - kMinPairedRow + 1>;
  using PairedKernelTable = std::array<PairedKernel, PairedRowLengths::size()>;  // index: row length - kMinPairedRow
  template <bool kPrefetch, size_t... W>
  static constexpr PairedKernelTable paired_table(std::index_sequence<W...>) {
    return {&paired_kernel<static_cast<int>(W + kMinPairedRow), kPrefetch>...};
  }

  // The convolution of paired_rows(g): (group of panels, kPairedImages images) tasks, group-major
  // (as lowered_columns_rows'), so that a thread's panels stay in L2 over its images. A task's
  // output rows are taken two at a time, row after row and image after image (the last row alone
  // where their count is odd), against each panel of the group: with a large weight, each panel
  // over all the task's rows before the next (the panel streams from L2 once per two rows, the
  // padded input rows, laid out by the first panel and kept, serve a kernel row's taps from L1);
  // with a small one, every panel on a pair before the next pair (panels_inner). AlexNet's 3x3
  // layers at 15x15, bf16, Xeon, same run as oneDNN: 3.8 / 4.8 / 3.3 ms with their kernel columns
  // lowered (columns_lowered: blocks of 28-29 pixels, A from L2) -> 2.5-2.9 / 3.6-4.1 / 2.4-2.7,
  // oneDNN 2.4-2.5 / 3.6-3.8 / 2.3-2.5.
  static void paired_rows_loop(const Args& a, FinishPixels finish) {
    static constexpr PairedKernelTable kPrefetching = paired_table<true>(PairedRowLengths{});
    static constexpr PairedKernelTable kStreaming = paired_table<false>(PairedRowLengths{});
    const ConvGeometry& g = a.g;
    const KernelTable& single = interior_kernels();
    const bool inner = panels_inner(g, a.blocks);
    const PairedKernel paired = (inner ? kPrefetching : kStreaming)[g.out_w - kMinPairedRow];
    const auto [left, right] = row_padding(g);
    const int64_t per_group = panels_per_group(a.blocks, panel_bytes(g), kPairedGroupBytes);
    const int64_t windows = (g.batch + kPairedImages - 1) / kPairedImages;
    at::parallel_for(0, a.blocks / per_group * windows, 1, [&](int64_t begin, int64_t end) {
      [[maybe_unused]] const BlockRun<Vec> block_run;
      BlockFinisher finisher(a, finish);
      InputRows<In> input(a.x, a.x_strides, g, paired_row_slots(g, a.blocks), g.kernel_h, left, right);
      std::vector<const In*> upper(g.kernel_h);
      // Output rows `row` and row + 1 (row alone where row + 1 == row_end), counted across images,
      // against panels [blk0, blk1).
      const auto rows_against = [&](int64_t row, int64_t row_end, int64_t blk0, int64_t blk1) {
        const int64_t n = row / g.out_h, oh = row % g.out_h;
        const auto input_rows = [&](int64_t r) {
          return input.rows(r / g.out_h, r % g.out_h * g.stride_h - g.pad_h, g.dilation_h, g.kernel_h, 0);
        };
        const In* const* x0 = input_rows(row);
        if (row + 1 == row_end) {
          for (int64_t blk = blk0; blk < blk1; ++blk) {
            single[g.out_w](a, x0, 0, blk, 0, RowDestination::finished(finisher, n, oh));
          }
          return;
        }
        std::copy(x0, x0 + g.kernel_h, upper.begin());  // the next call reuses the array
        const In* const* x1 = input_rows(row + 1);
        for (int64_t blk = blk0; blk < blk1; ++blk) {
          paired(a, upper.data(), x1, blk, finisher, n, oh);
        }
      };
      for (int64_t t = begin; t < end; ++t) {
        const int64_t first = t / windows * per_group, last = first + per_group, window = t % windows;
        const int64_t row0 = window * kPairedImages * g.out_h;
        const int64_t row_end = std::min(g.batch, (window + 1) * kPairedImages) * g.out_h;
        if (inner) {
          for (int64_t row = row0; row < row_end; row += 2) {
            rows_against(row, row_end, first, last);
          }
          continue;
        }
        for (int64_t blk = first; blk < last; ++blk) {
          for (int64_t row = row0; row < row_end; row += 2) {
            rows_against(row, row_end, blk, blk + 1);
          }
        }
      }
    });
  }

  // The one-pass finish of this call's output blocks (the BlockFinisher's; sums without the
  // bias): for a bfloat16 NHWC output whose residual, if any, has its channels innermost; else
  // nullptr (rows are buffered, then finished by apply_epilogue and write_row).
  static FinishPixels one_pass_finish(const Args& a) {
    const OutputEpilogue& e = a.epilogue;
    if (a.out_bf16 == nullptr || a.out_strides.c != 1 || (e.residual != nullptr && e.strides.c != 1)) {
      return nullptr;
    }
    static constexpr FinishPixels kFinish[3][2] = {
        {&finish_bf16_pixels<0, false, true>, &finish_bf16_pixels<0, true, true>},
        {&finish_bf16_pixels<1, false, true>, &finish_bf16_pixels<1, true, true>},
        {&finish_bf16_pixels<2, false, true>, &finish_bf16_pixels<2, true, true>}};
    return kFinish[e.residual == nullptr ? 0 : (e.residual_bf16 ? 2 : 1)][e.relu];
  }

  // Writes `pixels` output pixels (a row) from float32 sums src[ow * src_pixel_stride + j]
  // (j < columns, bias added, epilogue applied) to the output's elements from offset `first` on,
  // through its strides: rounded once to bfloat16 for a bfloat16 output.
  static void write_row(const Args& a, const float* src, int64_t src_pixel_stride, int64_t columns, int64_t first,
                        int64_t pixels) {
    const Strides4& s = a.out_strides;
    if (a.out_bf16 != nullptr && s.c == 1) {
      finish_bf16_pixels<0, false, false>(a, src, src_pixel_stride, nullptr, columns, 0, 0, 0, 0, pixels,
                                          first);  // rounding alone
    } else if (a.out_bf16 != nullptr) {
      copy_pixels_from_nhwc(src, src_pixel_stride, columns, pixels, a.out_bf16 + first, s.c, s.w);
    } else if (s.w == 1 && output_bytes(a.g) >= kStreamedOutputBytes) {
      stream_pixels_from_nhwc(src, src_pixel_stride, columns, pixels, a.out + first, s.c);
    } else {
      copy_pixels_from_nhwc(src, src_pixel_stride, columns, pixels, a.out + first, s.c, s.w);
    }
  }

  // A float32 NCHW output at least this large is written with non-temporal stores
  // (stream_pixels_from_nhwc): it cannot stay in L2 for the next layer anyway, and a row's 64
  // channel rows written at once are more streams than the hardware tracks, so each line was
  // read before it was written. The stem forward, NCHW, Xeon: 12.9 -> 9.1 ms (oneDNN 8.5).
  static constexpr int64_t kStreamedOutputBytes = int64_t{8} << 20;

  static int64_t output_bytes(const ConvGeometry& g) {
    return g.batch * g.out_channels * g.out_h * g.out_w * static_cast<int64_t>(sizeof(float));
  }

  // `value` rounded to bfloat16 bits (to nearest even; a NaN as c10's 0x7FC0): branch-free, so
  // that the loops calling it vectorize for this file's target.
  static uint16_t bf16_bits(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    return static_cast<uint16_t>(nan ? 0x7FC0u : rounded);
  }

  // The float32 value of bfloat16 bits.
  static float widen_bf16(uint16_t bits) {
    const uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &wide, sizeof(value));
    return value;
  }

  // The epilogue (+ residual, then ReLU, which keeps NaN as torch's does) on `columns` output
  // channels from co of output row (n, oh), in place on its float32 values at
  // row[ow * pixel_stride + j].
  static void apply_epilogue(const OutputEpilogue& e, float* row, int64_t pixel_stride, int64_t out_w, int64_t n,
                             int64_t oh, int64_t co, int64_t columns) {
    for (int64_t ow = 0; ow < out_w; ++ow) {
      float* v = row + ow * pixel_stride;
      if (e.residual != nullptr) {
        const int64_t first = e.strides.at(n, co, oh, ow);
        for (int64_t j = 0; j < columns; ++j) {
          const int64_t at = first + j * e.strides.c;
          v[j] += e.residual_bf16 ? widen_bf16(static_cast<const uint16_t*>(e.residual)[at])
                                  : static_cast<const float*>(e.residual)[at];
        }
      }
      if (e.relu) {
        for (int64_t j = 0; j < columns; ++j) {
          v[j] = v[j] < 0.0f ? 0.0f : v[j];
        }
      }
    }
  }

  // Pixels [ow0, ow0 + count) of a bfloat16 NHWC output row finished in one pass over their
  // float32 sums (a FinishPixels): + bias (kBias), + residual (none, float32 or bfloat16 channels
  // innermost: kResidual 0, 1, 2), ReLU, one rounding, stored.
  template <int kResidual, bool kRelu, bool kBias>
  static void finish_bf16_pixels(const Args& a, const float* src, int64_t src_pixel_stride, const float* bias,
                                 int64_t columns, int64_t n, int64_t oh, int64_t co, int64_t ow0, int64_t count,
                                 int64_t first) {
    const OutputEpilogue& e = a.epilogue;
    uint16_t* out = reinterpret_cast<uint16_t*>(a.out_bf16) + first;
    for (int64_t ow = ow0; ow < ow0 + count; ++ow) {
      const float* v = src + (ow - ow0) * src_pixel_stride;
      uint16_t* o = out + ow * a.out_strides.w;
      const int64_t r = kResidual != 0 ? e.strides.at(n, co, oh, ow) : 0;
      if (columns == kBlock) {  // a whole block: vector code, or a loop of known length, unrolled
        if constexpr (!std::is_void_v<typename FinishVector<Vec>::type>) {
          if (finish_bf16_block_pixel<kResidual, kRelu, kBias>(e, v, bias, r, o)) {
            continue;
          }
        }
        finish_bf16_pixel<kResidual, kRelu, kBias>(e, v, bias, r, o, kBlock);
      } else {
        finish_bf16_pixel<kResidual, kRelu, kBias>(e, v, bias, r, o, columns);
      }
    }
  }

  // One pixel's 32 channels of finish_bf16_pixels in the finish vector's registers (FinishVector):
  // false, nothing stored, where its rounding is not c10's (a NaN or denormal result), for the
  // portable loop to redo.
  template <int kResidual, bool kRelu, bool kBias>
  static bool finish_bf16_block_pixel(const OutputEpilogue& e, const float* v, [[maybe_unused]] const float* bias,
                                      [[maybe_unused]] int64_t r, uint16_t* o) {
    using V = typename FinishVector<Vec>::type;
    static_assert(kBlock == 2 * V::kLanes, "a block's channels in two registers");
    auto lo = V::load(v), hi = V::load(v + V::kLanes);
    if constexpr (kBias) {
      lo = V::add(lo, V::load(bias));
      hi = V::add(hi, V::load(bias + V::kLanes));
    }
    if constexpr (kResidual == 1) {
      const float* residual = static_cast<const float*>(e.residual) + r;
      lo = V::add(lo, V::load(residual));
      hi = V::add(hi, V::load(residual + V::kLanes));
    } else if constexpr (kResidual == 2) {
      const uint16_t* residual = static_cast<const uint16_t*>(e.residual) + r;
      lo = V::add(lo, V::load_bf16(residual));
      hi = V::add(hi, V::load_bf16(residual + V::kLanes));
    }
    if constexpr (kRelu) {
      lo = V::relu(lo);
      hi = V::relu(hi);
    }
    return V::store_bf16(o, lo, hi);
  }

  // One pixel of finish_bf16_pixels: o[j] = bfloat16(relu(v[j] + bias[j] + residual[r + j])), j < columns.
  template <int kResidual, bool kRelu, bool kBias>
  static inline __attribute__((always_inline)) void finish_bf16_pixel(const OutputEpilogue& e, const float* v,
                                                                      [[maybe_unused]] const float* bias,
                                                                      [[maybe_unused]] int64_t r, uint16_t* o,
                                                                      int64_t columns) {
    for (int64_t j = 0; j < columns; ++j) {
      float t = v[j];
      if constexpr (kBias) {
        t += bias[j];
      }
      if constexpr (kResidual == 1) {
        t += static_cast<const float*>(e.residual)[r + j];
      } else if constexpr (kResidual == 2) {
        t += widen_bf16(static_cast<const uint16_t*>(e.residual)[r + j]);
      }
      if constexpr (kRelu) {
        t = t < 0.0f ? 0.0f : t;
      }
      o[j] = bf16_bits(t);
    }
  }

  // Output row (n, oh), channels [co, co + columns), from its float32 sums src[ow * src_pixel_stride
  // + j] (bias added), its first `pixels` pixels (out_w; more where the rows that follow are
  // finished as one: finish_image): the epilogue applied and the row written (write_row). Only for
  // outputs one_pass_finish does not serve (those are finished block by block). `first`: the
  // offset of the row's first element in the output. src is overwritten.
  static void finish_row(const Args& a, float* src, int64_t src_pixel_stride, int64_t columns, int64_t n, int64_t oh,
                         int64_t co, int64_t first, int64_t pixels) {
    const OutputEpilogue& e = a.epilogue;
    if (e.any()) {
      apply_epilogue(e, src, src_pixel_stride, pixels, n, oh, co, columns);
    }
    write_row(a, src, src_pixel_stride, columns, first, pixels);
  }

  // Image n's output channels [co, co + columns) from the sums of its pixels (src[q *
  // src_pixel_stride + j], q = oh * out_w + ow; overwritten): as one row of out_h * out_w pixels
  // where the output's and the residual's rows follow each other (NCHW, NHWC), so that an NCHW
  // output is written in runs of whole channel planes instead of runs of out_w pixels; else row by
  // row (finish_row). `first`: the offset of output (n, co, 0, 0).
  static void finish_image(const Args& a, float* src, int64_t src_pixel_stride, int64_t columns, int64_t n,
                           int64_t co, int64_t first) {
    const ConvGeometry& g = a.g;
    const auto rows_follow = [&](const Strides4& t) { return t.h == g.out_w * t.w; };
    if (rows_follow(a.out_strides) && (a.epilogue.residual == nullptr || rows_follow(a.epilogue.strides))) {
      finish_row(a, src, src_pixel_stride, columns, n, 0, co, first, g.out_h * g.out_w);
      return;
    }
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      finish_row(a, src + oh * g.out_w * src_pixel_stride, src_pixel_stride, columns, n, oh, co,
                 first + oh * a.out_strides.h, g.out_w);
    }
  }

  // Short rows on tiles (fewer pixels than a tile has rows), their kernel columns lowered: each
  // image laid out as rows of output pixels whose elements are the channels of their kw column
  // taps, [phase][t][ow][kw][C] with input row t * sh + phase - ph (zeros outside the input) and tap
  // j of pixel ow at input column ow * sw + j * dw - pw. Kernel row i of output pixel q = oh * out_w
  // + ow is then one run of kw * C at phase (i * dh) % sh, row oh + (i * dh) / sh: consecutive
  // output pixels are kw * C apart across output rows too, so an A tile is one strided load of 16
  // real pixels (ResNet-18's 8-pixel rows: a block of 32 is four output rows) whatever the stride.
  // Read in place, a short row fills half a tile or less (layer4.0's 3x3/2: 8 of 16 rows); a
  // zero-padded image read as one run of "virtual" pixels per row (the previous layout, stride 1
  // only) also multiplies the padding columns (10 of every 8 pixels in layer4) and leaves its
  // blocks partly empty (78 pixels in three blocks of 26 instead of 64 in two of 32). Rows of 12 to
  // 15 pixels with a bfloat16 NHWC output go to paired_rows instead (one row per A tile): lowered,
  // a kernel row's three taps are three separate runs of the layout, so A streams from L2 with
  // B, where the padded rows serve every tap of a row from L1.
  static bool columns_lowered(const ConvGeometry& g) {
    constexpr int64_t kShortRow = 16;
    return kTiles && g.groups == 1 && g.out_w < kShortRow;
  }

  // Rows per phase of columns_lowered's layout.
  static int64_t lowered_phase_rows(const ConvGeometry& g) {
    return g.out_h + (g.kernel_h - 1) * g.dilation_h / g.stride_h;
  }

  // Whether some kernel row reads phase `phase` of columns_lowered's layout (a 1x1/2 layer reads
  // one of its two).
  static bool phase_is_read(const ConvGeometry& g, int64_t phase) {
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      if (i * g.dilation_h % g.stride_h == phase) {
        return true;
      }
    }
    return false;
  }

  // Image n of the input (any strides) laid out as columns_lowered describes, into `dst`; phases
  // no kernel row reads are left as they are.
  static void lower_columns(const Args& a, int64_t n, In* dst) {
    const ConvGeometry& g = a.g;
    const Strides4& xs = a.x_strides;
    const int64_t C = g.in_channels, rows = lowered_phase_rows(g), row_elements = g.out_w * g.kernel_w * C;
    for (int64_t phase = 0; phase < g.stride_h; ++phase) {
      if (!phase_is_read(g, phase)) {
        dst += rows * row_elements;
        continue;
      }
      for (int64_t t = 0; t < rows; ++t, dst += row_elements) {
        const int64_t ih = t * g.stride_h + phase - g.pad_h;
        if (ih < 0 || ih >= g.in_h) {
          std::memset(dst, 0, static_cast<size_t>(row_elements) * sizeof(In));
          continue;
        }
        const In* row = a.x + n * xs.n + ih * xs.h;
        In* out = dst;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          for (int64_t j = 0; j < g.kernel_w; ++j, out += C) {
            const int64_t iw = ow * g.stride_w + j * g.dilation_w - g.pad_w;
            if (iw < 0 || iw >= g.in_w) {
              std::memset(out, 0, static_cast<size_t>(C) * sizeof(In));
            } else if (xs.c == 1) {
              std::memcpy(out, row + iw * xs.w, static_cast<size_t>(C) * sizeof(In));
            } else {
              copy_pixels_to_nhwc(row + iw * xs.w, xs.c, xs.w, C, 1, out);
            }
          }
        }
      }
    }
  }

  // acc = the R output pixels from q0 of a columns_lowered image against panel blk; stored to
  // dst[r * dst_stride + j] with the bias, or pushed to `finisher` where one is given.
  template <int R>
  static void lowered_columns_kernel(const Args& a, const In* image, int64_t blk, int64_t q0, float* dst,
                                     int64_t dst_stride, BlockFinisher* finisher, int64_t n) {
    const ConvGeometry& g = a.g;
    const int64_t run = g.kernel_w * g.in_channels, rows = lowered_phase_rows(g);
    Block<R> acc;
    const In* wblock = a.weight + blk * g.kernel_h * run * kBlock;
    if (finisher != nullptr) {
      finisher->pace(tile_products(g.kernel_h, run));
    }
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t phase = i * g.dilation_h % g.stride_h, t0 = i * g.dilation_h / g.stride_h;
      const In* first = image + ((phase * rows + t0) * g.out_w + q0) * run;
      reduce(acc, StridedRows<In>{first, run}, wblock + i * run * kBlock, run, finisher);
    }
    const int64_t co0 = blk * kBlock;
    const int columns = static_cast<int>(std::min<int64_t>(kBlock, g.out_channels - co0));
    if (finisher != nullptr) {
      finisher->template push<R>(acc, n, 0, co0, q0, columns);
      return;
    }
    acc.store(dst, dst_stride, 1, a.bias != nullptr ? a.bias + co0 : nullptr, columns);
  }

  using LoweredColumnsKernel = void (*)(const Args&, const In*, int64_t, int64_t, float*, int64_t, BlockFinisher*,
                                        int64_t);
  template <size_t... R>
  static constexpr std::array<LoweredColumnsKernel, kMaxRows + 1> lowered_columns_table(std::index_sequence<R...>) {
    return {nullptr, &lowered_columns_kernel<static_cast<int>(R) + 1>...};
  }

  // Panels of the weight a thread keeps in L2 while it runs them over one image after another:
  // about 60 % of the 2 MiB L2 per core of the AMX CPUs (Sapphire, Emerald and Granite Rapids),
  // leaving room for the laid-out image. Measured on a Xeon (bf16, batch 32, ms for 0.25 / 0.5 /
  // 1 / 1.5 / 2 / 4 MiB): 512 -> 512 3x3 on 8x8 5.71 / 5.62 / 4.85 / 4.62 / 4.68 / 6.03; 256 -> 512
  // 3x3/2 4.10 / 3.06 / 2.63 / 2.56 / 2.50 / 3.10; 384 -> 256 3x3 on 15x15 6.64 / 5.62 / 5.25 /
  // 5.31 / 6.31 / 6.28.
  static constexpr int64_t kPanelGroupBytes = int64_t{5} << 18;

  // Panels of `bytes` each in a group of at most `group_bytes` (at least one) that divide
  // `panels` evenly, so that tasks are equal.
  static int64_t panels_per_group(int64_t panels, int64_t bytes, int64_t group_bytes = kPanelGroupBytes) {
    int64_t per_group = std::clamp<int64_t>(group_bytes / bytes, 1, panels);
    while (panels % per_group != 0) {
      --per_group;
    }
    return per_group;
  }

  // The convolution of columns_lowered(g): (group of panels, image) tasks, group-major, so that a
  // thread's group stays in L2 over its images; a group is the most panels within
  // kPanelGroupBytes that divide the panels evenly (equal tasks). A task lays its image out in a
  // buffer of the thread's own (in L2 too), then runs every panel of the group over each block of
  // pixels before the next block.
  static void lowered_columns_rows(const Args& a) {
    static constexpr auto kKernels = lowered_columns_table(std::make_index_sequence<kMaxRows>{});
    const ConvGeometry& g = a.g;
    const int64_t run = g.kernel_w * g.in_channels;
    const int64_t image_elements = g.stride_h * lowered_phase_rows(g) * g.out_w * run;
    const int64_t pixels = g.out_h * g.out_w;
    const PixelRuns runs(pixels);
    const int64_t per_group = panels_per_group(a.blocks, panel_bytes(g));
    const int64_t groups = a.blocks / per_group, cout = per_group * kBlock;
    const auto& s = a.out_strides;
    const FinishPixels finish = one_pass_finish(a);
    at::parallel_for(0, groups * g.batch, 1, [&](int64_t begin, int64_t end) {
      [[maybe_unused]] const BlockRun<Vec> block_run;
      BlockFinisher finisher(a, finish);
      BlockFinisher* const to = finish != nullptr ? &finisher : nullptr;
      AlignedVector<float> sums(to != nullptr ? 0 : pixels * cout);
      AlignedVector<In> image(image_elements);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t first = t / g.batch * per_group, n = t % g.batch;
        lower_columns(a, n, image.data());
        int64_t q0 = 0;
        for (int64_t r = 0; r < runs.count; ++r) {
          const int64_t len = runs.length(r);
          for (int64_t p = 0; p < per_group; ++p) {
            kKernels[len](a, image.data(), first + p, q0, sums.data() + q0 * cout + p * kBlock, cout, to, n);
          }
          q0 += len;
        }
        if (to == nullptr) {
          const int64_t co0 = first * kBlock, columns = std::min(cout, g.out_channels - co0);
          finish_image(a, sums.data(), cout, columns, n, co0, n * s.n + co0 * s.c);
        }
      }
    });
  }

  // acc = the R lowered rows at `rows` (`depth` elements apart) of output pixels ow0.. times panel
  // `blk` of the lowered weight, stored with the bias to destination d (store_block).
  template <int R>
  static void lowered_kernel(const Args& a, const In* rows, int64_t depth, int64_t blk, int64_t ow0,
                             const RowDestination& d) {
    Block<R> acc;
    if (d.finisher != nullptr) {
      d.finisher->pace(tile_products(1, depth));
    }
    reduce(acc, StridedRows<In>{rows, depth}, a.weight + blk * depth * kBlock, depth, d.finisher);
    const int64_t co0 = blk * kBlock;
    const int columns = static_cast<int>(std::min<int64_t>(kBlock, a.g.out_channels - co0));
    store_block<R>(a, acc, d, ow0, co0, co0, columns);
  }

  using LoweredKernel = void (*)(const Args&, const In*, int64_t, int64_t, int64_t, const RowDestination&);
  template <size_t... R>
  static constexpr std::array<LoweredKernel, kMaxRows + 1> lowered_table(std::index_sequence<R...>) {
    return {nullptr, &lowered_kernel<static_cast<int>(R) + 1>...};
  }

  // Lays out the receptive fields of output pixels ow0 .. ow0 + count - 1 of the output row whose
  // kernel rows' input rows are xrows (zero-padded: InputRows with row_padding; nullptr for a row
  // of zeros) as rows of `depth` elements, (i, j, c) order, zeros from patch_size() on. Each kernel
  // row is one run of kw * C inputs (one group, undilated columns), copied in whole 64-byte lines:
  // what a line copies past its run is overwritten by the next run or the next pixel's row, or
  // zeroed with the tail, so `rows` needs a line of room past its last row.
  static void lower_pixels(const ConvGeometry& g, const In* const* xrows, int64_t ow0, int64_t count, int64_t depth,
                           In* rows) {
    constexpr int64_t kLine = static_cast<int64_t>(kCacheLineBytes / sizeof(In));
    const int64_t run = g.kernel_w * g.in_channels, patch = g.kernel_h * run;
    for (int64_t r = 0; r < count; ++r) {
      In* dst = rows + r * depth;
      const int64_t first = ((ow0 + r) * g.stride_w - g.pad_w) * g.in_channels;  // in the padded row
      for (int64_t i = 0; i < g.kernel_h; ++i, dst += run) {
        const In* src = xrows[i];
        for (int64_t k = 0; k < run; k += kLine) {
          if (src == nullptr) {
            std::memset(dst + k, 0, kCacheLineBytes);
          } else {
            std::memcpy(dst + k, src + first + k, kCacheLineBytes);
          }
        }
      }
      std::memset(rows + r * depth + patch, 0, static_cast<size_t>(depth - patch) * sizeof(In));
    }
  }

  // The convolution of a few-channel layer on tiles, reduced over (kh, kw, c) together
  // (lowered_conv.cpp): a thread takes whole output rows; each run of up to 32 pixels is laid
  // out (lower_pixels) in a per-thread buffer that stays in L1, then multiplied by every panel of
  // the lowered weight ([blocks][depth / 2][32][2]), so nothing is lowered to memory.
  static void lowered_rows(const Args& a, int64_t depth) {
    static constexpr auto kLowered = lowered_table(std::make_index_sequence<kMaxRows>{});
    const ConvGeometry& g = a.g;
    const PixelRuns runs(g.out_w);
    const auto [left, right] = row_padding(g);
    const auto& s = a.out_strides;
    const FinishPixels finish = one_pass_finish(a);
    at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
      [[maybe_unused]] const BlockRun<Vec> run;
      BlockFinisher finisher(a, finish);
      AlignedVector<float> buffer(finish != nullptr ? 0 : g.out_w * g.out_channels);
      AlignedVector<In> rows(kMaxRows * depth + kCacheLineBytes / sizeof(In));
      InputRows<In> input(a.x, a.x_strides, g, cached_input_rows(g, a.blocks), g.kernel_h, left, right);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / g.out_h, oh = t % g.out_h;
        const In* const* xrows = input.rows(n, oh * g.stride_h - g.pad_h, g.dilation_h, g.kernel_h, 0);
        const int64_t row = n * s.n + oh * s.h;
        const RowDestination d = finish != nullptr ? RowDestination::finished(finisher, n, oh)
                                                   : RowDestination{buffer.data(), g.out_channels, 1};
        int64_t ow0 = 0;
        for (int64_t r = 0; r < runs.count; ++r) {
          const int64_t len = runs.length(r);
          lower_pixels(g, xrows, ow0, len, depth, rows.data());
          for (int64_t blk = 0; blk < a.blocks; ++blk) {
            kLowered[len](a, rows.data(), depth, blk, ow0, d);
          }
          ow0 += len;
        }
        if (finish == nullptr) {
          finish_row(a, buffer.data(), g.out_channels, g.out_channels, n, oh, 0, row, g.out_w);
        }
      }
    });
  }

  using PixelKernel = void (*)(const Args&, const In* const*, int64_t, int64_t, int64_t, const RowDestination&);
  using KernelTable = std::array<PixelKernel, kMaxRows + 1>;

  // Micro-kernels for every pixel count 1..kMaxRows (index 0 unused), so the
  // tail of a run needs no masking.
  template <bool kCheckColumns, size_t... R>
  static constexpr KernelTable kernel_table(std::index_sequence<R...>) {
    return {nullptr, &micro_kernel<static_cast<int>(R) + 1, kCheckColumns>...};
  }

  // The micro-kernels of pixels whose taps all read inside the (padded) input rows.
  static const KernelTable& interior_kernels() {
    static constexpr KernelTable kInterior = kernel_table<false>(std::make_index_sequence<kMaxRows>{});
    return kInterior;
  }

  static void rows(const Args& a) {
    const ConvGeometry& g = a.g;
    const bool padded =  // borders read the rows' zero padding
        padded_rows(g, a.blocks, !InputRows<In>::in_place(a.x_strides, g));
    // A bfloat16 NHWC output is finished block by block (BlockFinisher). Otherwise, when the
    // output's channels are not innermost (NCHW), or it is bfloat16, a row is first stored
    // channels innermost to a small float32 buffer (one row, in L1/L2) and then written out
    // transposed and/or rounded to bfloat16 (the one rounding of a bfloat16 output).
    const FinishPixels finish = one_pass_finish(a);
    if constexpr (kTiles) {
      if (paired_rows(g, a.blocks, padded, finish != nullptr)) {
        paired_rows_loop(a, finish);
        return;
      }
      if (columns_lowered(g)) {
        lowered_columns_rows(a);
        return;
      }
    }
    const KernelTable& kInterior = interior_kernels();
    static constexpr KernelTable kBorder = kernel_table<true>(std::make_index_sequence<kMaxRows>{});
    // Output columns [lo, hi) read only input columns inside [0, W) for every tap.
    const int64_t lo = std::min(g.out_w, (g.pad_w + g.stride_w - 1) / g.stride_w);
    const int64_t last_ok = g.in_w - 1 - (g.kernel_w - 1) * g.dilation_w + g.pad_w;  // ow * sw must not exceed this
    const int64_t hi = std::max(lo, std::min(g.out_w, last_ok < 0 ? int64_t{0} : last_ok / g.stride_w + 1));
    const PixelRuns runs(g.out_w);  // a row of output pixels
    // Blocks [blk0, blk1) of one output row, all blocks of a run of pixels before the next run, so
    // that the run's input rows stay in L1 while the weight panels stream past.
    const auto one_row = [&](const In* const* xrows, int64_t grp, int64_t blk0, int64_t blk1, const RowDestination& d) {
      int64_t ow0 = 0;
      for (int64_t run = 0; run < runs.count; ++run) {
        const int64_t len = runs.length(run);
        const bool border = !padded && (ow0 < lo || ow0 + len > hi);
        for (int64_t blk = blk0; blk < blk1; ++blk) {
          (border ? kBorder : kInterior)[len](a, xrows, grp, blk, ow0, d);
        }
        ow0 += len;
      }
    };
    const auto& s = a.out_strides;
    const int64_t coutg = g.out_channels_per_group();
    // Element offset of an output row's first element.
    const auto output_row = [&](int64_t grp, int64_t n, int64_t oh) {
      return n * s.n + grp * coutg * s.c + oh * s.h;
    };
    // Which operand stays in cache: with a small weight (a group's packed weight
    // within kWeightInCacheBytes) the blocks of one output row run back to back,
    // so the input rows are read once and the weight stays. With a large one,
    // the tasks are (panel, image) pairs, a panel being one block's weight:
    // each thread takes a range of panels and runs them image by image, so one
    // image's input stays in L2 while each panel is reused over the image's
    // rows and the thread's panels come from L3 (sweeping all images per panel
    // instead re-read the whole input from memory once per panel).
    const int64_t slots =
        InputRows<In>::in_place(a.x_strides, g) && !padded ? 0 : cached_input_rows(g, a.blocks);
    const int64_t pad_left = padded ? row_padding(g).first : 0, pad_right = padded ? row_padding(g).second : 0;
    const auto input_rows = [&](InputRows<In>& input, int64_t grp, int64_t n, int64_t oh) {
      return input.rows(n, oh * g.stride_h - g.pad_h, g.dilation_h, g.kernel_h, grp * g.in_channels_per_group());
    };
    const bool buffered = finish == nullptr && (s.c != 1 || a.out_bf16 != nullptr);
    if (weight_is_large(g, a.blocks)) {
      at::parallel_for(0, g.groups * a.blocks * g.batch, 1, [&](int64_t begin, int64_t end) {
        [[maybe_unused]] const BlockRun<Vec> run;
        BlockFinisher finisher(a, finish);
        AlignedVector<float> buffer(buffered ? g.out_w * coutg : 0);
        InputRows<In> input(a.x, a.x_strides, g, slots, g.kernel_h, pad_left, pad_right);
        const int64_t first_panel = begin / g.batch, last_panel = (end - 1) / g.batch;
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t panel = first_panel; panel <= last_panel; ++panel) {
            const int64_t t = panel * g.batch + n;
            if (t < begin || t >= end) {
              continue;
            }
            const int64_t grp = panel / a.blocks, blk = panel % a.blocks;
            const int64_t co0 = blk * kBlock, columns = std::min(kBlock, coutg - co0);
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              const int64_t row = output_row(grp, n, oh);
              const In* const* xrows = input_rows(input, grp, n, oh);
              if (finish != nullptr) {
                one_row(xrows, grp, blk, blk + 1, RowDestination::finished(finisher, n, oh));
                continue;
              }
              if (!buffered) {
                one_row(xrows, grp, blk, blk + 1, RowDestination{a.out + row, s.w, s.c});
                if (a.epilogue.any()) {  // the panel's columns of the row, just stored (s.c == 1)
                  apply_epilogue(a.epilogue, a.out + row + co0, s.w, g.out_w, n, oh, grp * coutg + co0, columns);
                }
                continue;
              }
              one_row(xrows, grp, blk, blk + 1, RowDestination{buffer.data(), coutg, 1});
              finish_row(a, buffer.data() + co0, coutg, columns, n, oh, grp * coutg + co0, row + co0 * s.c, g.out_w);
            }
          }
        }
      });
      return;
    }
    // Blocks inner: a thread computes whole output rows.
    at::parallel_for(0, g.groups * g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
      [[maybe_unused]] const BlockRun<Vec> run;
      BlockFinisher finisher(a, finish);
      AlignedVector<float> buffer(buffered ? g.out_w * coutg : 0);
      InputRows<In> input(a.x, a.x_strides, g, slots, g.kernel_h, pad_left, pad_right);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t oh = t % g.out_h, n = (t / g.out_h) % g.batch, grp = t / (g.out_h * g.batch);
        const int64_t row = output_row(grp, n, oh);
        const RowDestination d = finish != nullptr ? RowDestination::finished(finisher, n, oh)
            : buffered                            ? RowDestination{buffer.data(), coutg, 1}
                                                  : RowDestination{a.out + row, s.w, s.c};
        const In* const* xrows = input_rows(input, grp, n, oh);
        if (finish != nullptr && t + 1 < end && InputRows<In>::in_place(a.x_strides, g)) {
          // The next output row's new input rows, read while this row computes.
          const int64_t oh1 = (t + 1) % g.out_h, n1 = ((t + 1) / g.out_h) % g.batch;
          const int64_t last = std::min(g.in_h - 1, oh1 * g.stride_h - g.pad_h + (g.kernel_h - 1) * g.dilation_h);
          const int64_t first = std::max<int64_t>(0, last - g.stride_h + 1);
          if (n1 == n && first <= last) {
            finisher.ahead(a.x + n1 * a.x_strides.n + first * a.x_strides.h,
                           (last - first + 1) * a.x_strides.h * static_cast<int64_t>(sizeof(In)));
          }
        }
        one_row(xrows, grp, 0, a.blocks, d);
        if (buffered) {
          finish_row(a, buffer.data(), coutg, coutg, n, oh, grp * coutg, row, g.out_w);
        } else if (finish == nullptr && a.epilogue.any()) {  // the whole row, just stored (s.c == 1)
          apply_epilogue(a.epilogue, a.out + row, s.w, g.out_w, n, oh, grp * coutg, coutg);
        }
      }
    });
  }

  // `packed` is pack_direct_weight(weight, g, kBlock) (pairs: pack_direct_weight_pairs), `x`
  // [N, C, H, W] with any strides, float32 (pairs: bfloat16), bias float32. Writes `out`, float32
  // [N, Cout, Ho, Wo] with any strides (pairs: float32 or bfloat16, rounded once from the float32
  // sums). An input whose channels are not innermost is laid out
  // row by row as the kernel reaches it (InputRows) where one group spans all channels and the
  // cached rows fit kInputRowCacheBytes, else converted to NHWC up front.
  static void run(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                  const ConvGeometry& g, const OutputEpilogue& epilogue, const at::Tensor& out) {
    const at::ScalarType in_type = kPairs ? at::kBFloat16 : at::kFloat;
    TORCH_CHECK(x.scalar_type() == in_type && packed.scalar_type() == in_type,
                "direct conv: expected ", in_type, " operands, got ", x.scalar_type(), " and ", packed.scalar_type());
    TORCH_CHECK(x.sizes() == at::IntArrayRef({g.batch, g.in_channels, g.in_h, g.in_w}),
                "direct conv: expected an input of size [", g.batch, ", ", g.in_channels, ", ", g.in_h, ", ", g.in_w,
                "], got ", x.sizes());
    TORCH_CHECK(!kPairs || g.in_channels_per_group() % 2 == 0, "direct conv: bfloat16 pairs need an even channel count");
    const int64_t blocks = (g.out_channels_per_group() + kBlock - 1) / kBlock;
    TORCH_CHECK(packed.numel() == g.groups * blocks * kBlock * g.patch_size(), "direct conv: packed weight of the wrong size");
    const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
    check_output(out, g, kPairs);
    if (out.numel() == 0) {
      return;
    }
    const bool out_bf16 = out.scalar_type() == at::kBFloat16;
    // Rows are laid out per thread only when one group spans all channels (else each group's
    // pass would lay out every channel again).
    const at::Tensor input = InputRows<In>::readable(x, g, cached_input_rows(g, blocks), g.groups == 1);
    const auto [left, right] = row_padding(g);
    const int64_t padded_row = kTiles ? (left + g.in_w + right) * g.in_channels : 0;  // paired_kernel's row of zeros
    const at::Tensor zeros = at::zeros({std::max(g.in_channels_per_group(), padded_row)}, x.options());
    rows(Args{static_cast<const In*>(input.const_data_ptr()), strides_of(input),
              static_cast<const In*>(packed.const_data_ptr()), b.defined() ? b.const_data_ptr<float>() : nullptr,
              static_cast<const In*>(zeros.const_data_ptr()), out_bf16 ? nullptr : out.mutable_data_ptr<float>(),
              out_bf16 ? out.mutable_data_ptr<c10::BFloat16>() : nullptr, strides_of(out), g, blocks, epilogue});
  }

  // A few-channel layer on tiles (lowered_conv.cpp): `packed` is the [Cout, depth] lowered weight
  // (depth = patch_size() rounded up to a whole product, (kh, kw, c) order) packed by
  // pack_direct_weight_pairs as a 1x1 convolution's; x bfloat16 [N, C, H, W] with any strides,
  // one group, undilated columns; `out` as for run.
  static void run_lowered(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                          const ConvGeometry& g, const OutputEpilogue& epilogue, const at::Tensor& out) {
    static_assert(kTiles, "the lowered layout feeds whole tile products");
    const int64_t depth = lowered_depth(g);
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16,
                "lowered tile conv: expected bfloat16 operands, got ", x.scalar_type(), " and ", packed.scalar_type());
    TORCH_CHECK(g.groups == 1 && g.dilation_w == 1, "lowered tile conv: one group and undilated columns");
    TORCH_CHECK(x.sizes() == at::IntArrayRef({g.batch, g.in_channels, g.in_h, g.in_w}),
                "lowered tile conv: expected an input of size [", g.batch, ", ", g.in_channels, ", ", g.in_h, ", ",
                g.in_w, "], got ", x.sizes());
    const int64_t blocks = (g.out_channels + kBlock - 1) / kBlock;
    TORCH_CHECK(packed.numel() == blocks * kBlock * depth, "lowered tile conv: packed weight of the wrong size");
    const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
    check_output(out, g, true);
    if (out.numel() == 0) {
      return;
    }
    const bool out_bf16 = out.scalar_type() == at::kBFloat16;
    lowered_rows(Args{static_cast<const In*>(x.const_data_ptr()), strides_of(x),
                      static_cast<const In*>(packed.const_data_ptr()), b.defined() ? b.const_data_ptr<float>() : nullptr,
                      nullptr, out_bf16 ? nullptr : out.mutable_data_ptr<float>(),
                      out_bf16 ? out.mutable_data_ptr<c10::BFloat16>() : nullptr, strides_of(out), g, blocks, epilogue},
                 depth);
  }
};

} // namespace miniplaces_ext::cpu
