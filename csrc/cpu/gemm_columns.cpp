// The im2col + GEMM path's operands (gemm_columns.h).
#include "gemm_columns.h"

#include "im2col.h"
#include "layout.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>

namespace miniplaces_ext::cpu {

int64_t images_per_chunk(const ConvGeometry& g, int64_t element_size, int64_t column_bytes) {
  const int64_t per_image = std::max<int64_t>(1, g.out_pixels() * g.patch_size() * element_size);
  return std::clamp<int64_t>(column_bytes / per_image, 1, std::max<int64_t>(g.batch, 1));
}

int64_t weight_grad_rows(const ConvGeometry& g, int64_t element_size, int64_t column_bytes) {
  const int64_t per_row = std::max<int64_t>(1, g.patch_size() * element_size);
  return std::clamp<int64_t>(column_bytes / per_row, 1, std::max<int64_t>(g.batch * g.out_pixels(), 1));
}

ColumnSource::ColumnSource(const at::Tensor& input, const ConvGeometry& g, int64_t max_rows) : g_(g) {
  if (g.samples_pixels()) {
    x_pixels_ = nhwc_pixels(input, g.stride_h, g.stride_w).reshape({-1, g.in_channels});
  } else {
    x_pixels_ = nhwc_pixels(input).reshape({-1, g.in_channels});
    buffer_ = at::empty({max_rows, g.patch_size()}, input.options());
  }
}

at::Tensor ColumnSource::columns(int64_t row0, int64_t rows, int64_t group) {
  const int64_t c0 = group * g_.in_channels_per_group();
  if (g_.samples_pixels()) {
    return x_pixels_.narrow(0, row0, rows).narrow(1, c0, g_.in_channels_per_group());
  }
  at::Tensor col = buffer_.narrow(0, 0, rows);
  AT_DISPATCH_FLOATING_TYPES(col.scalar_type(), "miniplaces_im2col", [&] {
    im2col<scalar_t>(x_pixels_.const_data_ptr<scalar_t>(), col.mutable_data_ptr<scalar_t>(), g_, row0, rows, c0,
                     g_.patch_size());
  });
  return col;
}

at::Tensor weight_matrix(const at::Tensor& weight, const ConvGeometry& g) {
  return weight.permute({0, 2, 3, 1}).contiguous().view({g.out_channels, g.patch_size()});
}

} // namespace miniplaces_ext::cpu
