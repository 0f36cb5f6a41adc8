// ctest executable: our CPU kernels against a naive direct convolution written
// here from the definition, plus the argument checks. Exit code 0 = pass.
#include "conv.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  failures += ok ? 0 : 1;
}

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  const bool ok = a.sizes() == b.sizes() && at::allclose(a.to(at::kDouble), b.to(at::kDouble), 1e-9, 1e-9);
  expect(ok, what + (ok ? "" : " max|diff|=" + std::to_string((a - b).abs().max().item<double>())));
}

void expect_error(const std::function<void()>& call, const std::string& needle, const std::string& what) {
  try {
    call();
  } catch (const c10::Error& e) {
    expect(std::string(e.what()).find(needle) != std::string::npos, what + " (message: " + e.what_without_backtrace() + ")");
    return;
  }
  expect(false, what + " (no error raised)");
}

struct Conf {
  int64_t n, c, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

// y[n,o,i,j] = b[o] + sum_{c in group(o), p, q} W[o,c,p,q] x[n, c, i*sh - ph + p*dh, j*sw - pw + q*dw].
at::Tensor naive_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Conf& f) {
  const int64_t ho = (f.h + 2 * f.ph - f.dh * (f.kh - 1) - 1) / f.sh + 1;
  const int64_t wo = (f.w + 2 * f.pw - f.dw * (f.kw - 1) - 1) / f.sw + 1;
  auto y = at::zeros({f.n, f.cout, ho, wo}, x.options());
  auto X = x.accessor<double, 4>();
  auto W = w.accessor<double, 4>();
  auto Y = y.accessor<double, 4>();
  const int64_t cg = f.c / f.groups, og = f.cout / f.groups;
  for (int64_t n = 0; n < f.n; ++n)
    for (int64_t o = 0; o < f.cout; ++o)
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          double acc = b[o].item<double>();
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t p = 0; p < f.kh; ++p)
              for (int64_t q = 0; q < f.kw; ++q) {
                const int64_t ih = i * f.sh - f.ph + p * f.dh, iw = j * f.sw - f.pw + q * f.dw;
                if (ih >= 0 && ih < f.h && iw >= 0 && iw < f.w) {
                  acc += W[o][c][p][q] * X[n][(o / og) * cg + c][ih][iw];
                }
              }
          Y[n][o][i][j] = acc;
        }
  return y;
}

void check_conf(const Conf& f) {
  const std::string name = "conv " + std::to_string(f.c) + "->" + std::to_string(f.cout) + " k" + std::to_string(f.kh) +
      "x" + std::to_string(f.kw) + " s" + std::to_string(f.sh) + " p" + std::to_string(f.ph) + " d" +
      std::to_string(f.dh) + " g" + std::to_string(f.groups);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto x = at::randn({f.n, f.c, f.h, f.w}, opts);
  auto w = at::randn({f.cout, f.c / f.groups, f.kh, f.kw}, opts);
  auto b = at::randn({f.cout}, opts);
  const std::array<int64_t, 2> s{f.sh, f.sw}, p{f.ph, f.pw}, d{f.dh, f.dw};

  auto y = miniplaces_ext::cpu::conv2d_forward(x, w, b, s, p, d, f.groups);
  expect_close(y, naive_forward(x, w, b, f), name + " forward");

  // Backward, for L = sum(y * g): conv is linear in x and in W, so the
  // gradients must satisfy the adjoint identities <dL/dx, v> = <g, conv(v, W)>
  // and <dL/dW, v> = <g, conv(x, v)> for random directions v, with conv the
  // naive definition above.
  auto g = at::randn_like(y);
  auto [gx, gw, gb] =
      miniplaces_ext::cpu::conv2d_backward(g, x, w, s, p, d, f.groups, {true, true, true});
  auto zero_b = at::zeros({f.cout}, opts);
  auto vx = at::randn_like(x);
  auto vw = at::randn_like(w);
  const double lhs_x = (gx * vx).sum().item<double>();
  const double rhs_x = (g * naive_forward(vx, w, zero_b, f)).sum().item<double>();
  const double lhs_w = (gw * vw).sum().item<double>();
  const double rhs_w = (g * naive_forward(x, vw, zero_b, f)).sum().item<double>();
  expect(std::abs(lhs_x - rhs_x) <= 1e-8 * (1 + std::abs(rhs_x)), name + " grad_input (adjoint identity)");
  expect(std::abs(lhs_w - rhs_w) <= 1e-8 * (1 + std::abs(rhs_w)), name + " grad_weight (adjoint identity)");
  expect_close(gb, g.sum({0, 2, 3}), name + " grad_bias");
}

} // namespace

int main() {
  at::manual_seed(0);
  check_conf({2, 3, 9, 8, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1});
  check_conf({2, 4, 11, 10, 6, 3, 2, 2, 1, 1, 0, 2, 1, 2});
  check_conf({1, 4, 7, 7, 4, 3, 3, 1, 1, 2, 2, 2, 2, 4});
  check_conf({3, 3, 19, 19, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1});
  check_conf({2, 8, 6, 6, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1});
  check_conf({2, 8, 6, 6, 8, 1, 1, 2, 2, 0, 0, 1, 1, 1});

  // The conv1d front door reaches the same kernel through the dispatcher.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("miniplaces_ext::conv1d_forward", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                  at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  auto x1 = at::randn({2, 3, 20}, at::kDouble);
  auto w1 = at::randn({5, 3, 4}, at::kDouble);
  auto y1 = op.call(x1, w1, c10::nullopt, {2}, {1}, {1}, 1);
  auto y2 = miniplaces_ext::cpu::conv2d_forward(x1.unsqueeze(2), w1.unsqueeze(2), c10::nullopt, {1, 2}, {0, 1},
                                                {1, 1}, 1);
  expect_close(y1, y2.squeeze(2), "conv1d via dispatcher == conv2d with height 1");

  auto x = at::randn({1, 4, 5, 5});
  auto w = at::randn({2, 4, 3, 3});
  expect_error([&] { miniplaces_ext::cpu::conv2d_forward(x, w, c10::nullopt, {0, 1}, {0, 0}, {1, 1}, 1); },
               "non-positive stride", "stride 0 is rejected");
  expect_error([&] { miniplaces_ext::cpu::conv2d_forward(x, w, c10::nullopt, {1, 1}, {0, 0}, {1, 1}, 3); },
               "divisible by groups", "groups not dividing channels is rejected");
  expect_error([&] { miniplaces_ext::cpu::conv2d_forward(x, at::randn({2, 4, 7, 7}), c10::nullopt, {1, 1}, {0, 0},
                                                         {1, 1}, 1); },
               "kernel can't be larger", "kernel larger than input is rejected");

  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
