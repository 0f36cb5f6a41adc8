// The CUDA convolution kernels, as device-agnostic source: one tiled
// implicit-GEMM kernel for three problems, a split-K reduction and a bias
// gradient. nvcc compiles this file for the GPU (conv_kernel.cu); the CPU
// harness compiles it as host C++ after csrc/cuda_on_cpu/device_api.h, which
// supplies the CUDA built-ins, and runs it thread by thread
// (csrc/cuda_on_cpu/conv_on_cpu.cpp).
//
// Every pass of a convolution is a matrix product whose operands are read
// straight from the tensors (no im2col buffer), NCHW layout:
//   forward      out[m = (n,oh,ow), co]  = sum_{k = (c,i,j)}    x(n, c, oh*s-p+i*d, ...) * W[co, k]
//   grad_input   dx[m = (n,ih,iw), c]    = sum_{k = (co,i,j)}   dy(n, co, oh, ow) * W[co, c, i, j],
//                                          (oh, ow) the output pixel whose tap (i, j) reads (ih, iw)
//   grad_weight  dW[co, k = (c,i,j)]     = sum_{m = (n,oh,ow)}  dy(n, co, oh, ow) * x(n, c, ...)
// The GEMM kernel stages 64x16 tiles of A and 16x64 tiles of B in shared
// memory and gives each of 256 threads a 4x4 register block; accumulation is
// in the op-math type (float for half/bfloat16). grad_weight splits its long
// reduction over blocks into fixed chunks written to a workspace and summed in
// a fixed order: deterministic, no atomics. blockIdx.z enumerates groups (and
// split-K chunks).
#pragma once

#include "../conv.h"

#include <ATen/OpMathType.h>

#include <cstdint>

namespace miniplaces_ext::cuda {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each

// Geometry with 64-bit sizes, passed by value to the kernels.
struct Geo {
  int64_t batch, c, h, w, cout, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw, cg, coutg;
  explicit Geo(const ConvGeometry& g)
      : batch(g.batch), c(g.in_channels), h(g.in_h), w(g.in_w), cout(g.out_channels), kh(g.kernel_h),
        kw(g.kernel_w), ho(g.out_h), wo(g.out_w), sh(g.stride_h), sw(g.stride_w), ph(g.pad_h), pw(g.pad_w),
        dh(g.dilation_h), dw(g.dilation_w), cg(g.in_channels_per_group()), coutg(g.out_channels_per_group()) {}
  __device__ int64_t taps() const { return kh * kw; }
};

// x(n, grp*Cg + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw), or 0 in the zero padding, for output
// pixel m = (n, oh, ow) and patch index k = (c, i, j): the im2col matrix, read in place.
template <typename acc_t, typename scalar_t>
__device__ acc_t patch_value(const scalar_t* x, const Geo& g, int64_t grp, int64_t m, int64_t k) {
  const int64_t ow = m % g.wo, oh = (m / g.wo) % g.ho, n = m / (g.wo * g.ho);
  const int64_t c = k / g.taps(), i = (k / g.kw) % g.kh, j = k % g.kw;
  const int64_t ih = oh * g.sh - g.ph + i * g.dh, iw = ow * g.sw - g.pw + j * g.dw;
  if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) return acc_t(0);
  return static_cast<acc_t>(x[((n * g.c + grp * g.cg + c) * g.h + ih) * g.w + iw]);
}

template <typename scalar_t>
struct ForwardProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* weight;
  const scalar_t* bias;
  scalar_t* out;
  Geo g;
  int64_t rows() const { return g.batch * g.ho * g.wo; }
  int64_t cols() const { return g.coutg; }
  __device__ void k_range(int64_t z, int64_t& k0, int64_t& k1) const { k0 = 0; k1 = g.cg * g.taps(); }
  __device__ acc_t a(int64_t z, int64_t m, int64_t k) const { return patch_value<acc_t>(x, g, z, m, k); }
  __device__ acc_t b(int64_t z, int64_t k, int64_t co) const {
    return static_cast<acc_t>(weight[(z * g.coutg + co) * g.cg * g.taps() + k]);
  }
  __device__ void store(int64_t z, int64_t m, int64_t co, acc_t v) const {
    const int64_t p = m % (g.ho * g.wo), n = m / (g.ho * g.wo), oc = z * g.coutg + co;
    if (bias != nullptr) v += static_cast<acc_t>(bias[oc]);
    out[(n * g.cout + oc) * g.ho * g.wo + p] = static_cast<scalar_t>(v);
  }
};

template <typename scalar_t>
struct GradInputProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* dy;
  const scalar_t* weight;
  scalar_t* dx;
  Geo g;
  int64_t rows() const { return g.batch * g.h * g.w; }
  int64_t cols() const { return g.cg; }
  __device__ void k_range(int64_t z, int64_t& k0, int64_t& k1) const { k0 = 0; k1 = g.coutg * g.taps(); }
  __device__ acc_t a(int64_t z, int64_t m, int64_t k) const {
    const int64_t iw = m % g.w, ih = (m / g.w) % g.h, n = m / (g.w * g.h);
    const int64_t co = k / g.taps(), i = (k / g.kw) % g.kh, j = k % g.kw;
    const int64_t th = ih + g.ph - i * g.dh, tw = iw + g.pw - j * g.dw;
    if (th < 0 || tw < 0 || th % g.sh != 0 || tw % g.sw != 0) return acc_t(0);
    const int64_t oh = th / g.sh, ow = tw / g.sw;
    if (oh >= g.ho || ow >= g.wo) return acc_t(0);
    return static_cast<acc_t>(dy[((n * g.cout + z * g.coutg + co) * g.ho + oh) * g.wo + ow]);
  }
  __device__ acc_t b(int64_t z, int64_t k, int64_t c) const {
    const int64_t co = k / g.taps(), tap = k % g.taps();
    return static_cast<acc_t>(weight[((z * g.coutg + co) * g.cg + c) * g.taps() + tap]);
  }
  __device__ void store(int64_t z, int64_t m, int64_t c, acc_t v) const {
    const int64_t p = m % (g.h * g.w), n = m / (g.h * g.w);
    dx[(n * g.c + z * g.cg + c) * g.h * g.w + p] = static_cast<scalar_t>(v);
  }
};

template <typename scalar_t>
struct GradWeightProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* dy;
  const scalar_t* x;
  acc_t* workspace;  // [splits][groups][coutg][cg*kh*kw]
  Geo g;
  int64_t groups, splits, chunk;
  int64_t rows() const { return g.coutg; }
  int64_t cols() const { return g.cg * g.kh * g.kw; }
  __device__ void k_range(int64_t z, int64_t& k0, int64_t& k1) const {
    const int64_t total = g.batch * g.ho * g.wo;
    k0 = (z % splits) * chunk;
    k1 = k0 + chunk < total ? k0 + chunk : total;
  }
  __device__ acc_t a(int64_t z, int64_t co, int64_t m) const {
    const int64_t grp = z / splits, p = m % (g.ho * g.wo), n = m / (g.ho * g.wo);
    return static_cast<acc_t>(dy[(n * g.cout + grp * g.coutg + co) * g.ho * g.wo + p]);
  }
  __device__ acc_t b(int64_t z, int64_t m, int64_t col) const { return patch_value<acc_t>(x, g, z / splits, m, col); }
  __device__ void store(int64_t z, int64_t co, int64_t col, acc_t v) const {
    const int64_t grp = z / splits, s = z % splits;
    workspace[((s * groups + grp) * g.coutg + co) * g.cg * g.taps() + col] = v;
  }
};

// C[z][m, n] = sum_{k in k_range(z)} A(z, m, k) * B(z, k, n): one 64x64 tile per
// block, z = z_offset + blockIdx.z (a launch covers at most 65535 values of z).
template <typename Problem>
__global__ void __launch_bounds__(kThreads) implicit_gemm_kernel(const Problem p, int64_t rows, int64_t cols,
                                                                 int64_t z_offset) {
  using acc_t = typename Problem::acc_t;
  __shared__ acc_t As[kTileK][kTileM + 1];
  __shared__ acc_t Bs[kTileK][kTileN + 1];
  const int64_t z = z_offset + blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tid = threadIdx.x;
  const int tm = tid % 16, tn = tid / 16;  // this thread's 4x4 block: rows tm + 16*r, cols tn + 16*q
  int64_t k0, k1;
  p.k_range(z, k0, k1);

  acc_t acc[4][4] = {};
  for (int64_t kt = k0; kt < k1; kt += kTileK) {
    // Each thread stages 4 elements of A (consecutive threads: consecutive m)
    // and 4 of B (consecutive threads: consecutive n).
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int idx = tid + e * kThreads;
      const int am = idx % kTileM, ak = idx / kTileM;
      const int64_t gm = m0 + am, gk = kt + ak;
      As[ak][am] = (gm < rows && gk < k1) ? p.a(z, gm, gk) : acc_t(0);
      const int bn = idx % kTileN, bk = idx / kTileN;
      const int64_t gn = n0 + bn, gk2 = kt + bk;
      Bs[bk][bn] = (gn < cols && gk2 < k1) ? p.b(z, gk2, gn) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = As[kk][tm + 16 * r];
#pragma unroll
      for (int q = 0; q < 4; ++q) bv[q] = Bs[kk][tn + 16 * q];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * bv[q];
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t gm = m0 + tm + 16 * r;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t gn = n0 + tn + 16 * q;
      if (gm < rows && gn < cols) p.store(z, gm, gn, acc[r][q]);
    }
  }
}

// out[i] = sum_s parts[s][i], summed in a fixed order (deterministic split-K).
template <typename acc_t, typename scalar_t>
__global__ void sum_splits_kernel(const acc_t* parts, scalar_t* out, int64_t splits, int64_t size) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size) return;
  acc_t total = 0;
  for (int64_t s = 0; s < splits; ++s) total += parts[s * size + i];
  out[i] = static_cast<scalar_t>(total);
}

// grad_bias[co] = sum over n, pixels of dy[n, co, :]: one block per channel,
// fixed-shape tree reduction (deterministic).
template <typename scalar_t>
__global__ void bias_grad_kernel(const scalar_t* dy, scalar_t* out, int64_t batch, int64_t channels, int64_t pixels) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t co = blockIdx.x;
  acc_t sum = 0;
  for (int64_t idx = threadIdx.x; idx < batch * pixels; idx += kThreads) {
    const int64_t n = idx / pixels, p = idx % pixels;
    sum += static_cast<acc_t>(dy[(n * channels + co) * pixels + p]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[co] = static_cast<scalar_t>(partial[0]);
}

} // namespace miniplaces_ext::cuda
