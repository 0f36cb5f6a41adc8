// The input rows a CPU kernel reads, channels innermost, whatever the input's
// layout: read in place when the input is NHWC (channels innermost, pixels C
// apart), otherwise laid out row by row as a thread first needs them into a
// small cache of its own, where they stay in L1/L2 while the kernel reuses
// them. The NCHW input is then read once from memory and never written back
// as a whole NHWC copy (which cost a quarter of a 3x3/2 layer's time here).
//
// Include only after <ATen/ATen.h> and <vector>, inside the target pragma of
// the kernel that uses it: the class lives in an unnamed namespace, so each
// ISA's file gets its own copy compiled for its own target.
#pragma once

#include "../../conv.h"
#include "../layout.h"
#include "aligned_vector.h"

#include <cstdint>
#include <vector>

namespace miniplaces_ext::cpu {
namespace {

// Most bytes of input rows a thread lays out and keeps; a kernel that would need more
// converts its input up front instead.
constexpr int64_t kInputRowCacheBytes = int64_t{1} << 20;

template <typename In>
class InputRows {
 public:
  // x: input [N, C, H, W] of g, addressed through strides s. slots: rows kept (row ih of image n
  // in slot (n * H + ih) % slots), 0 to read in place (in_place(s, g) must hold); the rows a
  // caller asks for at once must lie within `slots` consecutive rows, counting the images' rows
  // one after another. max_rows: the most rows asked for at once. pad_left /
  // pad_right: zero pixels kept left and right of each laid-out row (slots > 0), so that a
  // kernel may read columns [-pad_left, W + pad_right) of a row.
  InputRows(const In* x, const Strides4& s, const ConvGeometry& g, int64_t slots, int64_t max_rows,
            int64_t pad_left = 0, int64_t pad_right = 0)
      : x_(x), s_(s), g_(g), slots_(slots), row_size_(whole_lines<In>((pad_left + g.in_w + pad_right) * g.in_channels)),
        first_pixel_(pad_left * g.in_channels), cache_(slots * row_size_ + kOverread), tags_(slots, -1),
        rows_(max_rows) {}

  // Elements a kernel may read past the end of a laid-out row (and of the last one): one cache
  // line's worth, so that a copy of whole lines from within a row stays inside the cache.
  static constexpr int64_t kOverread = static_cast<int64_t>(kCacheLineBytes / sizeof(In));

  // Whether an input with strides s can be read in place.
  static bool in_place(const Strides4& s, const ConvGeometry& g) {
    return nhwc_rows_in_place(s, g.in_channels);
  }

  // Bytes a thread keeps with `slots` rows of `padding` zero pixels besides the input's.
  static int64_t cache_bytes(const ConvGeometry& g, int64_t slots, int64_t padding = 0) {
    return slots * (g.in_w + padding) * g.in_channels * static_cast<int64_t>(sizeof(In));
  }

  // The input a kernel reads through InputRows: x itself when it can be read in place, or laid
  // out row by row (`may_lay_out`) with `slots` rows within kInputRowCacheBytes; else an NHWC
  // copy of x made up front (viewed [N, C, H, W]), which is read in place.
  static at::Tensor readable(const at::Tensor& x, const ConvGeometry& g, int64_t slots, bool may_lay_out) {
    const bool as_is = in_place(strides_of(x), g) || (may_lay_out && cache_bytes(g, slots) <= kInputRowCacheBytes);
    return as_is ? x : nhwc_pixels(x).permute({0, 3, 1, 2});
  }

  // Rows ih = first + i * step (i < count) of image n, each [W][C] channels innermost, from
  // channel `channel0`: element (iw, c) at rows[i][iw * C + c]; nullptr for a row above or below
  // the input (all its taps are zero).
  const In* const* rows(int64_t n, int64_t first, int64_t step, int64_t count, int64_t channel0) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t ih = first + i * step;
      if (ih < 0 || ih >= g_.in_h) {
        rows_[i] = nullptr;
        continue;
      }
      const In* source = x_ + n * s_.n + ih * s_.h;
      if (slots_ == 0) {
        rows_[i] = source + channel0;
        continue;
      }
      const int64_t tag = n * g_.in_h + ih, slot = tag % slots_;
      In* row = cache_.data() + slot * row_size_ + first_pixel_;
      if (tags_[slot] != tag) {
        copy_pixels_to_nhwc(source, s_.c, s_.w, g_.in_channels, g_.in_w, row);
        tags_[slot] = tag;
      }
      rows_[i] = row + channel0;
    }
    return rows_.data();
  }

 private:
  const In* x_;
  Strides4 s_;
  const ConvGeometry& g_;
  int64_t slots_;
  int64_t row_size_, first_pixel_;  // elements per laid-out row (whole cache lines), and before its first pixel
  AlignedVector<In> cache_;  // zero-initialised: the padding stays zero; rows start on cache lines
  std::vector<int64_t> tags_;
  std::vector<const In*> rows_;
};

} // namespace
} // namespace miniplaces_ext::cpu
