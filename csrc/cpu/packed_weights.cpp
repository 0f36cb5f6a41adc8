// Weights in the layouts the NHWC kernels read (shared by every ISA level), and
// the inference cache of them (see packed_weights.h).
#include "packed_weights.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/AutogradState.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>
#include <utility>

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

// dst = the weight w [Cout, Cw, kh, kw] (any strides, Cw <= Cg) as panels
// [groups][blocks][kh][kw][Cg / P][width][P] of `width` output channels, P = 1 or the bfloat16
// pair width 2; zero past Cout / groups and past Cw. One task per panel, which is written
// sequentially from an L1-sized window of its source rows (16 input channels of each of its
// output channels), so a 512 x 512 x 3 x 3 weight packs in a single pass over memory instead of
// torch's permute-copy (32 source lines per 32 destination values, 4.6 ms of a 30 ms layer).
template <typename T>
void pack_panels(const at::Tensor& w, const ConvGeometry& g, int64_t width, int64_t P, at::Tensor& dst) {
  const int64_t coutg = g.out_channels_per_group(), cg = g.in_channels_per_group(), cw = w.size(1);
  const int64_t taps = g.kernel_h * g.kernel_w, blocks = (coutg + width - 1) / width;
  const int64_t s_co = w.stride(0), s_ci = w.stride(1), s_i = w.stride(2), s_j = w.stride(3);
  const T* src = static_cast<const T*>(w.const_data_ptr());
  T* out = static_cast<T*>(dst.mutable_data_ptr());
  const int64_t panel = taps * cg * width;  // elements per panel
  constexpr int64_t kChannelWindow = 16;
  at::parallel_for(0, g.groups * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t grp = task / blocks, blk = task % blocks;
      const int64_t lanes = std::min(width, coutg - blk * width);
      T* p = out + task * panel;
      if (lanes < width || cw < cg) {
        std::fill_n(p, panel, T{0});
      }
      const T* first = src + (grp * coutg + blk * width) * s_co;
      for (int64_t c0 = 0; c0 < cw; c0 += kChannelWindow) {
        const int64_t c1 = std::min(cw, c0 + kChannelWindow);
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t tap = (t / g.kernel_w) * s_i + (t % g.kernel_w) * s_j;
          for (int64_t ci = c0; ci < c1; ++ci) {
            T* row = p + ((t * (cg / P) + ci / P) * width) * P + ci % P;
            const T* column = first + ci * s_ci + tap;
            for (int64_t lane = 0; lane < lanes; ++lane) {
              row[lane * P] = column[lane * s_co];
            }
          }
        }
      }
    }
  });
}

} // namespace

at::Tensor pack_direct_weight(const at::Tensor& weight, const ConvGeometry& g, int64_t block_width) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 4 &&
                  weight.size(0) == g.out_channels && weight.size(1) == g.in_channels_per_group(),
              "direct weight packing: expected a float32 [", g.out_channels, ", ", g.in_channels_per_group(),
              ", kh, kw] weight, got ", weight.scalar_type(), " ", weight.sizes());
  const int64_t blocks = (g.out_channels_per_group() + block_width - 1) / block_width;
  at::Tensor packed = at::empty({g.groups, blocks, g.kernel_h, g.kernel_w, g.in_channels_per_group(), block_width},
                                weight.options());
  pack_panels<float>(weight, g, block_width, 1, packed);
  return packed;
}

at::Tensor pack_direct_weight_pairs(const at::Tensor& weight, const ConvGeometry& g, int64_t block_width) {
  TORCH_CHECK(g.groups == 1 && g.in_channels % 2 == 0 && weight.scalar_type() == at::kBFloat16 &&
                  weight.dim() == 4 && weight.size(0) == g.out_channels && weight.size(1) <= g.in_channels,
              "bfloat16 pair packing: expected a one-group bfloat16 weight of at most ", g.in_channels,
              " input channels (an even count), got ", weight.scalar_type(), " ", weight.sizes());
  const int64_t blocks = (g.out_channels + block_width - 1) / block_width;
  at::Tensor packed =
      at::empty({1, blocks, g.kernel_h, g.kernel_w, g.in_channels / 2, block_width, 2}, weight.options());
  pack_panels<uint16_t>(weight, g, block_width, 2, packed);
  return packed;
}

// U = G w G^T per (output, input) channel pair, in float64, rounded once to
// float32 and written straight into the packed layout.
at::Tensor winograd_transform_weight(const at::Tensor& weight, int64_t block_width) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.scalar_type() == at::kFloat,
              "Winograd weight transform: expected a float32 [Cout, Cin, 3, 3] weight, got ",
              weight.scalar_type(), " ", weight.sizes());
  const at::Tensor& w = weight;  // read through its strides: channels_last weights are not copied
  const int64_t cout = w.size(0), cin = w.size(1);
  const int64_t s_co = w.stride(0), s_ci = w.stride(1), s_r = w.stride(2), s_c = w.stride(3);
  const int64_t blocks = (cout + block_width - 1) / block_width;
  // [36][blocks][Cin][block_width]; output channels past Cout stay zero.
  at::Tensor u = cout % block_width == 0 ? at::empty({36, blocks, cin, block_width}, w.options())
                                         : at::zeros({36, blocks, cin, block_width}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = u.mutable_data_ptr<float>();
  // One task per (block, input channel): the block_width kernels of its output channels are
  // transformed together (lanes innermost, so the float64 arithmetic vectorises) and its 36 rows
  // of block_width values then written whole. (Writing each value straight to the layout touched
  // 36 cache lines a 36th of the tensor apart, which share a cache set, once per output channel:
  // 8x slower on a 512 x 512 weight.)
  at::parallel_for(0, blocks * cin, 16, [&](int64_t begin, int64_t end) {
    std::vector<double> k(9 * block_width), gk(18 * block_width);  // [tap][lane], [6][3][lane]
    std::vector<float> rows(36 * block_width);                      // [36][lane]
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task / cin, ci = task % cin;
      const int64_t lanes = std::min(block_width, cout - blk * block_width);
      for (int64_t lane = 0; lane < lanes; ++lane) {
        const float* kernel = src + (blk * block_width + lane) * s_co + ci * s_ci;
        for (int r = 0; r < 3; ++r) {
          for (int c = 0; c < 3; ++c) {
            k[(r * 3 + c) * block_width + lane] = kernel[r * s_r + c * s_c];
          }
        }
      }
      for (int i = 0; i < 6; ++i) {  // G k
        for (int j = 0; j < 3; ++j) {
          double* out = gk.data() + (i * 3 + j) * block_width;
          const double *k0 = k.data() + j * block_width, *k1 = k0 + 3 * block_width, *k2 = k1 + 3 * block_width;
          for (int64_t lane = 0; lane < lanes; ++lane) {
            out[lane] = kG[i][0] * k0[lane] + kG[i][1] * k1[lane] + kG[i][2] * k2[lane];
          }
        }
      }
      for (int i = 0; i < 6; ++i) {  // (G k) G^T
        const double *g0 = gk.data() + i * 3 * block_width, *g1 = g0 + block_width, *g2 = g1 + block_width;
        for (int j = 0; j < 6; ++j) {
          float* out = rows.data() + (i * 6 + j) * block_width;
          for (int64_t lane = 0; lane < lanes; ++lane) {
            out[lane] = static_cast<float>(g0[lane] * kG[j][0] + g1[lane] * kG[j][1] + g2[lane] * kG[j][2]);
          }
        }
      }
      for (int64_t xi = 0; xi < 36; ++xi) {
        std::copy_n(rows.data() + xi * block_width, lanes, dst + ((xi * blocks + blk) * cin + ci) * block_width);
      }
    }
  });
  return u;
}

} // namespace miniplaces_ext::cpu

namespace miniplaces_ext::cpu {
namespace {

// One cached layout of one weight tensor. The tensor is held weakly: the entry
// is dropped once the tensor is gone, and never matches a new tensor that
// happens to reuse its address.
struct CacheEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> tensor;
  int64_t version;
  const void* data;
  at::Tensor packed;
};

class WeightCache {
 public:
  at::Tensor get(const at::Tensor& weight, int64_t layout, const std::function<at::Tensor()>& pack) {
    const Key key{weight.unsafeGetTensorImpl(), layout};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end() && !it->second.tensor.expired() && it->second.version == weight._version() &&
          it->second.data == weight.const_data_ptr()) {
        return it->second.packed;
      }
    }
    at::Tensor packed = pack();
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {  // forget tensors that are gone
      it = it->second.tensor.expired() ? entries_.erase(it) : std::next(it);
    }
    entries_.insert_or_assign(key, CacheEntry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                                                  weight.getIntrusivePtr()),
                                              weight._version(), weight.const_data_ptr(), packed});
    return packed;
  }

  int64_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(entries_.size());
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
  }

 private:
  using Key = std::pair<const c10::TensorImpl*, int64_t>;
  struct KeyHash {
    size_t operator()(const Key& k) const { return std::hash<const void*>()(k.first) * 31 + std::hash<int64_t>()(k.second); }
  };
  std::mutex mutex_;
  std::unordered_map<Key, CacheEntry, KeyHash> entries_;
};

WeightCache& weight_cache() {
  static WeightCache cache;
  return cache;
}

// pack(), or the cache's copy of it for this weight in `layout` when `cacheable`. An inference
// tensor (made under torch.inference_mode, like autocast's weight copies there) has no version
// counter to tell an in-place change by, so it is packed per call, never cached.
at::Tensor packed_or_cached(const at::Tensor& weight, int64_t layout, bool cacheable,
                            const std::function<at::Tensor()>& pack) {
  return cacheable && !weight.is_inference() ? weight_cache().get(weight, layout, pack) : pack();
}

} // namespace

bool weights_stay_packed() {
  return c10::InferenceMode::is_enabled() || c10::AutogradState::get_tls_state().get_fw_grad_mode();
}

at::Tensor packed_weight(Algo algo, const at::Tensor& weight, const ConvGeometry& g, int64_t block_width,
                         bool cacheable) {
  const auto pack = [&] {
    const at::Tensor w = weight.to(at::kFloat);  // the kernels read float32 weights, whatever the input dtype
    return algo == Algo::winograd ? winograd_transform_weight(w, block_width) : pack_direct_weight(w, g, block_width);
  };
  // A layout is the algorithm, the block width and the number of groups.
  return packed_or_cached(weight, (static_cast<int64_t>(algo) << 48) | (block_width << 32) | g.groups, cacheable,
                          pack);
}

at::Tensor packed_weight_pairs(const at::Tensor& weight, const ConvGeometry& g, int64_t block_width, bool cacheable) {
  constexpr int64_t kPairsLayout = int64_t{1} << 56;  // apart from every (algorithm, width, groups) layout
  return packed_or_cached(weight, kPairsLayout | (block_width << 32) | g.groups, cacheable,
                          [&] { return pack_direct_weight_pairs(weight, g, block_width); });
}

at::Tensor lowered_weight_rows(const at::Tensor& weight, const ConvGeometry& g, int64_t depth) {
  return at::constant_pad_nd(weight.permute({0, 2, 3, 1}).reshape({g.out_channels, g.patch_size()}),
                             {0, depth - g.patch_size()});
}

at::Tensor packed_lowered_weight(const at::Tensor& weight, const ConvGeometry& g, int64_t depth, int64_t block_width,
                                 bool cacheable) {
  constexpr int64_t kLoweredLayout = int64_t{1} << 57;  // apart from the layouts above
  const auto pack = [&] {
    ConvGeometry lowered = g;
    lowered.in_channels = depth;
    lowered.kernel_h = lowered.kernel_w = 1;
    return pack_direct_weight_pairs(lowered_weight_rows(weight, g, depth).view({g.out_channels, depth, 1, 1}), lowered,
                                    block_width);
  };
  return packed_or_cached(weight, kLoweredLayout | (depth << 40) | (block_width << 32) | g.groups, cacheable, pack);
}

TORCH_LIBRARY_FRAGMENT(miniplaces_ext, m) {
  m.def("weight_cache_size() -> int", [] { return weight_cache().size(); });
  m.def("clear_weight_cache() -> ()", [] { weight_cache().clear(); });
}

} // namespace miniplaces_ext::cpu
