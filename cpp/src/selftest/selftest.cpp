// run_selftest: every op at every SIMD level this CPU has, on small awkward shapes (stride above
// the kernel, padding, dilation, groups, batch 1, odd sizes), against the plain-loop references
// (cpu/ref/) in double: the per-level ops by op_checks' functions (as juanji_ops_levels_test on
// more cases), the rest here. Integer-valued data where a result must be exact; gradients of the
// float64 ops also against central finite differences of the forward ops.
#include "juanji/selftest.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/dense.hpp"
#include "cpu/ref/reference.hpp"
#include "juanji/bfloat16.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/loss.hpp"
#include "juanji/ops/optim.hpp"
#include "juanji/ops/pool.hpp"
#include "selftest/checker.hpp"
#include "selftest/op_checks.hpp"

namespace juanji {
namespace selftest {
namespace {

namespace ref = cpu::ref;
using I = std::int64_t;

// ---- The cases ------------------------------------------------------------------------------

// Together they reach every algorithm of every pass at every vector width (the row "conv
// algorithms" says so): few input channels (direct), 16+ channels (Winograd), 8+ filters (filter
// blocks), strides (stride phases), one filter per channel (depthwise); GEMM and the reference
// take them all.
std::vector<ConvCase> conv_cases() {
  return {
      {"direct_batch1", {1, 1, 7, 9}, {6, 1, 5, 5}, conv_options({1}, {2}), 2},
      {"narrow", {5, 2, 6, 7}, {3, 2, 3, 3}, conv_options({1}, {1}), 2},
      {"dilated", {2, 3, 9, 8}, {5, 3, 3, 3}, conv_options({1}, {2}, {2}), 2},
      {"winograd_odd", {1, 16, 5, 7}, {17, 16, 3, 3}, conv_options({1}, {1}), 2},
      {"winograd_groups", {2, 32, 4, 6}, {32, 16, 3, 3}, conv_options({1}, {1}, {1}, 2), 2},
      {"filter_blocks", {2, 9, 7, 8}, {8, 9, 3, 3}, conv_options({1}, {1}), 2},
      {"filter_blocks_strided", {1, 6, 9, 11}, {12, 6, 3, 3}, conv_options({2}, {1}), 2},
      {"stride_above_kernel", {2, 3, 11, 9}, {4, 3, 2, 2}, conv_options({3}, {1}), 2},
      {"strided_dilated", {2, 3, 11, 9}, {4, 3, 3, 2}, conv_options({2, 3}, {1, 2}, {2, 1}), 2},
      {"pointwise_strided", {2, 8, 5, 6}, {9, 8, 1, 1}, conv_options({2}, {0}), 2},
      {"gemm_batches", {2, 1, 46, 46}, {2, 1, 3, 3}, conv_options({1}, {1}), 2},  // images in parallel
      {"groups", {1, 6, 7, 7}, {6, 2, 3, 3}, conv_options({1}, {1}, {1}, 3), 2},
      {"same_even_kernel", {2, 3, 8, 8}, {4, 3, 4, 4}, same_padding(), 2},
      {"depthwise", {2, 4, 6, 6}, {4, 1, 3, 3}, conv_options({1}, {1}, {1}, 4), 2},
      {"depthwise_strided", {1, 5, 9, 19}, {5, 1, 3, 3}, conv_options({2}, {1}, {1}, 5), 2},
      {"depthwise_dilated", {2, 3, 9, 8}, {3, 1, 5, 4}, conv_options({1, 2}, {4, 3}, {2, 1}, 3), 2},
      {"conv1d", {1, 2, 1, 17}, {3, 2, 1, 3}, conv_options({1}, {1}), 1},
      {"conv1d_strided", {3, 4, 1, 20}, {6, 4, 1, 5}, conv_options({2}, {2}), 1},
      {"conv1d_depthwise", {2, 6, 1, 29}, {6, 1, 1, 3}, conv_options({4}, {1}, {1}, 6), 1},
  };
}

// float64 has GEMM and the reference only: a few cases.
std::vector<ConvCase> conv_cases_f64() {
  return {
      {"strided_dilated", {2, 3, 11, 9}, {4, 3, 3, 2}, conv_options({2, 3}, {1, 2}, {2, 1}), 2},
      {"groups", {1, 6, 7, 7}, {6, 2, 3, 3}, conv_options({1}, {1}, {1}, 3), 2},
      {"conv1d_strided", {3, 4, 1, 20}, {6, 4, 1, 5}, conv_options({2}, {2}), 1},
  };
}

// Panel tails at every vector width, K past a block (256), M past a block of A panels.
std::vector<GemmShape> gemm_shapes() { return {{1, 1, 1}, {5, 7, 3}, {7, 17, 9}, {13, 33, 40}, {150, 20, 260}}; }

std::vector<PoolCase> pool_cases() {
  return {
      {{2, 3, 8, 10}, {2}, {}, {0}, false, true},  // plain 2x2 windows
      {{1, 2, 7, 9}, {2}, {}, {0}, true, true},    // ceil mode: partial windows
      {{1, 2, 4, 37}, {2}, {}, {0}, false, true},  // rows of several vectors of windows
      {{2, 2, 9, 8}, {3}, {2}, {1}, false, true},
      {{2, 2, 6, 7}, {3}, {1}, {1}, false, false},
      {{1, 3, 8, 9}, {2, 3}, {1, 2}, {1, 1}, true, false},
      {{1, 2, 9, 10}, {3}, {2}, {1}, true, true},
      {{2, 3, 17}, {3}, {2}, {1}, true, true},  // 1-d
      {{2, 2, 10}, {2}, {3}, {0}, false, true},  // 1-d, stride above the kernel
  };
}

std::vector<Shape> norm_shapes() { return {{2, 3, 7, 9}, {4, 2, 1, 31}, {1, 3, 5, 7}, {2, 2, 4, 8}}; }

// The fused batch norm + ReLU + max pooling: its 2x2 kernel (even and odd planes) and the
// general path.
std::vector<Shape> fused_norm_shapes() { return {{2, 3, 6, 8}, {1, 2, 7, 9}}; }
std::vector<PoolCase> fused_pools() {
  return {{{}, {2}, {}, {0}, false, true}, {{}, {3}, {2}, {1}, true, true}};
}

// ---- Helpers ------------------------------------------------------------------------------

template <class T>
Tensor random_tensor(Data& data, const Shape& shape, Values values) {
  return tensor_of<T>(shape, data.make<T>(static_cast<std::size_t>(checked_numel(shape)), values));
}

Tensor labels_tensor(Data& data, I n, I classes) {
  Tensor t = Tensor::empty({n}, DType::int64);
  for (I i = 0; i < n; ++i) t.data<I>()[i] = data.below(classes);
  return t;
}

std::string shape_name(const Shape& shape) {
  std::string out;
  for (I n : shape) out += (out.empty() ? "" : "x") + std::to_string(n);
  return out;
}

// magnitude[i] = |want[i]| + scale.
std::vector<double> magnitude_of(const std::vector<double>& want, double scale) {
  std::vector<double> out(want.size());
  for (std::size_t i = 0; i < want.size(); ++i) out[i] = std::fabs(want[i]) + scale;
  return out;
}

double largest(const std::vector<double>& v) {
  double out = 0;
  for (double x : v) out = std::max(out, std::fabs(x));
  return out;
}

// Runs check(); an exception fails row `op`.
void guarded(Checker& checker, const char* op, const std::function<void()>& check) {
  try {
    check();
  } catch (const std::exception& e) {
    checker.exception(op, op, e);
  }
}

// ---- Linear -------------------------------------------------------------------------------

template <class T>
void check_linear(Checker& checker, Data& data) {
  struct Case {
    I N, in, out;
  };
  for (Case c : {Case{1, 5, 3}, Case{7, 33, 17}, Case{4, 1, 1}, Case{3, 70, 9}})
    for (Values values : kBothValues) {
      const bool with_bias = values == Values::integers;
      const std::string what = "linear " + type_name<T>() + " " + std::to_string(c.N) + "x" + std::to_string(c.in) +
                               " -> " + std::to_string(c.out) + (with_bias ? " with bias" : "");
      const auto x = data.make<T>(c.N * c.in, values), w = data.make<T>(c.out * c.in, values);
      const auto b = data.make<T>(c.out, values), gy = data.make<T>(c.N * c.out, values);
      const auto wx = widened(x), ww = widened(w), wgy = widened(gy);
      // y = x w^T + b; grad_x = grad_y w; grad_w = grad_y^T x; grad_b = sum over the batch.
      const auto products = [&](bool sizes) {
        const auto px = sizes ? absolute(wx) : wx, pw = sizes ? absolute(ww) : ww, pgy = sizes ? absolute(wgy) : wgy;
        std::vector<double> y(c.N * c.out), gx(c.N * c.in), gw(c.out * c.in), gb(c.out, 0.0);
        ref::gemm(c.N, c.out, c.in, px.data(), c.in, 1, pw.data(), 1, c.in, y.data(), c.out, false);
        for (I n = 0; n < c.N; ++n)
          for (I o = 0; o < c.out; ++o) {
            if (with_bias) y[n * c.out + o] += sizes ? std::fabs(double(b[o])) : double(b[o]);
            gb[o] += pgy[n * c.out + o];
          }
        ref::gemm(c.N, c.in, c.out, pgy.data(), c.out, 1, pw.data(), c.in, 1, gx.data(), c.in, false);
        ref::gemm(c.out, c.in, c.N, pgy.data(), 1, c.out, px.data(), c.in, 1, gw.data(), c.in, false);
        return std::vector<std::vector<double>>{y, gx, gw, gb};
      };
      const auto want = products(false), size = products(true);
      const Tensor tx = tensor_of<T>({c.N, c.in}, x), tw = tensor_of<T>({c.out, c.in}, w);
      const Tensor tb = with_bias ? tensor_of<T>({c.out}, b) : Tensor();
      guarded(checker, "linear forward", [&] {
        Tensor y = Tensor::full({c.N, c.out}, -5.0, kDType<T>);
        linear_forward(tx, tw, tb, y);
        checker.close("linear forward", what, values_of<T>(y), want[0], size[0], values, kTolerance<T>);
      });
      guarded(checker, "linear backward", [&] {
        Tensor gx = Tensor::full({c.N, c.in}, -5.0, kDType<T>), gw = Tensor::full({c.out, c.in}, -5.0, kDType<T>);
        Tensor gb = Tensor::full({c.out}, -5.0, kDType<T>);
        linear_backward_into(tensor_of<T>({c.N, c.out}, gy), tx, tw, gx, gw, gb);
        checker.close("linear backward", what + " grad_x", values_of<T>(gx), want[1], size[1], values, kTolerance<T>);
        checker.close("linear backward", what + " grad_w", values_of<T>(gw), want[2], size[2], values, kTolerance<T>);
        checker.close("linear backward", what + " grad_b", values_of<T>(gb), want[3], size[3], values, kTolerance<T>);
      });
    }
}

// ---- Global average pooling ---------------------------------------------------------------

template <class T>
void check_global_avg_pool(Checker& checker, Data& data) {
  for (const Shape& shape : {Shape{2, 3, 5, 7}, Shape{1, 1, 1, 1}, Shape{3, 2, 8, 8}}) {
    const std::string what = "global average pooling " + type_name<T>() + " " + shape_name(shape);
    PoolOptions options;
    options.kernel = {shape[2], shape[3]};
    const PoolGeometry g = PoolGeometry::make(shape, options, 2, "selftest");
    const auto x = data.make<T>(checked_numel(shape), Values::uniform);
    const auto gy = data.make<T>(shape[0] * shape[1], Values::uniform);
    std::vector<double> y(gy.size()), y_size(gy.size()), dx(x.size());
    ref::avg_pool_forward(g, widened(x).data(), y.data());
    ref::avg_pool_forward(g, absolute(widened(x)).data(), y_size.data());
    ref::avg_pool_backward(g, widened(gy).data(), dx.data());
    const Tensor tx = tensor_of<T>(shape, x);
    checker.close("global avg pool", what, values_of<T>(global_avg_pool2d(tx)), y, y_size, Values::uniform,
                  kTolerance<T>);
    const Tensor gx = global_avg_pool2d_backward(tensor_of<T>({shape[0], shape[1], 1, 1}, gy), tx);
    checker.close("global avg pool", what + " backward", values_of<T>(gx), dx, magnitude_of(dx, 0.0), Values::uniform,
                  kTolerance<T>);
  }
}

// ---- Activations and the residual sum -----------------------------------------------------

// ReLU and leaky ReLU (a slope of a power of 2) exactly on any data; sigmoid and tanh, whose
// float32 forms are vectorised polynomials, within a tolerance of |want| on uniform data.
template <class T>
void check_activations(Checker& checker, Data& data) {
  const double slope = 0.125;
  for (Activation kind : {Activation::relu, Activation::leaky_relu, Activation::sigmoid, Activation::tanh})
    for (I n : {1, 7, 33, 1000}) {
      const bool exact = kind == Activation::relu || kind == Activation::leaky_relu;
      const std::string what = std::string(activation_name(kind)) + " " + type_name<T>() + " n=" + std::to_string(n);
      for (Values values : kBothValues) {
        if (!exact && values == Values::integers) continue;
        const auto x = data.make<T>(n, values), gy = data.make<T>(n, values);
        std::vector<double> y(n), dx(n);
        ref::activation_forward(kind, slope, widened(x).data(), y.data(), n);
        ref::activation_backward(kind, slope, widened(gy).data(), widened(x).data(), dx.data(), n);
        const Tensor tx = tensor_of<T>({n}, x);
        Tensor ty = Tensor::full({n}, -5.0, kDType<T>), tdx = Tensor::full({n}, -5.0, kDType<T>);
        activation_forward_into(kind, slope, tx, ty);
        const double tolerance = exact ? 0.0 : kTolerance<T>;  // 0: bit for bit
        checker.close("activation forward", what + " (" + values_name(values) + " data)", values_of<T>(ty), y,
                      magnitude_of(y, 0.0), tolerance);
        // The backward as the layers call it: sigmoid and tanh from the forward's output.
        activation_backward_into(kind, slope, tensor_of<T>({n}, gy), tx, ty, tdx);
        checker.close("activation backward", what + " (" + values_name(values) + " data)", values_of<T>(tdx), dx,
                      magnitude_of(dx, 0.0), tolerance);
      }
    }
}

// a + b (and ReLU of it) is exact: the sum of two floats rounds once either way.
template <class T>
void check_add(Checker& checker, Data& data) {
  for (I n : {1, 9, 100})
    for (bool relu : {false, true})
      for (Values values : kBothValues) {
        const auto a = data.make<T>(n, values), b = data.make<T>(n, values);
        std::vector<double> want(n);
        for (I i = 0; i < n; ++i) {
          const double sum = double(a[i]) + double(b[i]);
          want[i] = relu && sum < 0 ? 0.0 : sum;
        }
        Tensor y = Tensor::full({n}, -5.0, kDType<T>);
        add_into(tensor_of<T>({n}, a), tensor_of<T>({n}, b), y, relu);
        checker.close("add (+ ReLU)", std::string("add ") + type_name<T>() + " n=" + std::to_string(n) +
                                          (relu ? " with ReLU" : ""),
                      values_of<T>(y), want, magnitude_of(want, 0.0), values, 0.0);
      }
}

// ---- Softmax ------------------------------------------------------------------------------

template <class T>
void check_softmax(Checker& checker, Data& data) {
  struct Case {
    Shape shape;
    I dim;
  };
  // Contiguous rows (short, long, of one element) and strided lines.
  const Case cases[] = {{{3, 7}, 1}, {{1, 70}, -1}, {{4, 1}, 1}, {{2, 5, 3, 4}, 1}, {{2, 3, 5}, 0}};
  for (const Case& c : cases)
    for (bool log : {false, true}) {
      const std::string name = log ? "log_softmax" : "softmax";
      const std::string what = name + " " + type_name<T>() + " " + shape_name(c.shape) + " dim " + std::to_string(c.dim);
      const I rank = static_cast<I>(c.shape.size()), dim = c.dim < 0 ? c.dim + rank : c.dim;
      I outer = 1, inner = 1;
      for (I i = 0; i < dim; ++i) outer *= c.shape[i];
      for (I i = dim + 1; i < rank; ++i) inner *= c.shape[i];
      const I D = c.shape[dim], n = outer * D * inner;
      // Logits of a few units: far enough apart for the maximum's shift to matter.
      std::vector<T> x = data.make<T>(n, Values::uniform);
      for (T& v : x) v *= T(4);
      const auto gy = data.make<T>(n, Values::uniform);
      std::vector<double> y(n), dx(n), p(n);
      ref::softmax_forward(log, outer, D, inner, widened(x).data(), y.data());
      ref::softmax_backward(log, outer, D, inner, widened(gy).data(), widened(x).data(), dx.data());
      ref::softmax_forward(false, outer, D, inner, widened(x).data(), p.data());
      // The size of each value's terms: |y| itself for the forward ops (log-softmax's x - max and
      // -log(sum) have one sign), the products of p with the gradient's terms for the backward.
      std::vector<double> dx_size(n);
      for (I o = 0; o < outer; ++o)
        for (I j = 0; j < inner; ++j) {
          double sum_abs = 0, dot_abs = 0;
          for (I d = 0; d < D; ++d) {
            const I at = (o * D + d) * inner + j;
            sum_abs += std::fabs(double(gy[at]));
            dot_abs += std::fabs(double(gy[at])) * p[at];
          }
          for (I d = 0; d < D; ++d) {
            const I at = (o * D + d) * inner + j;
            dx_size[at] = log ? std::fabs(double(gy[at])) + p[at] * sum_abs
                              : p[at] * (std::fabs(double(gy[at])) + dot_abs);
          }
        }
      const Tensor tx = tensor_of<T>(c.shape, x), tgy = tensor_of<T>(c.shape, gy);
      guarded(checker, (name + " forward").c_str(), [&] {
        const Tensor ty = log ? log_softmax(tx, c.dim) : softmax(tx, c.dim);
        checker.close(name + " forward", what, values_of<T>(ty), y, magnitude_of(y, 0.0), kTolerance<T>);
      });
      guarded(checker, (name + " backward").c_str(), [&] {
        const Tensor tdx = log ? log_softmax_backward(tgy, tx, c.dim) : softmax_backward(tgy, tx, c.dim);
        checker.close(name + " backward", what, values_of<T>(tdx), dx, dx_size, kTolerance<T>);
      });
    }
}

// ---- Losses -------------------------------------------------------------------------------

template <class T>
void check_cross_entropy(Checker& checker, Data& data) {
  struct Case {
    I N, C;
  };
  for (Case c : {Case{1, 10}, Case{5, 7}, Case{3, 1}, Case{9, 33}})
    for (double smoothing : {0.0, 0.1}) {
      const std::string what = "cross-entropy " + type_name<T>() + " " + std::to_string(c.N) + "x" +
                               std::to_string(c.C) + " label smoothing " + std::to_string(smoothing).substr(0, 3);
      std::vector<T> logits = data.make<T>(c.N * c.C, Values::uniform);
      for (T& v : logits) v *= T(5);
      const Tensor tlogits = tensor_of<T>({c.N, c.C}, logits), labels = labels_tensor(data, c.N, c.C);
      std::vector<double> loss(c.N), grad(c.N * c.C), loss_size(c.N), grad_size(c.N * c.C);
      ref::cross_entropy(c.N, c.C, widened(logits).data(), labels.data<I>(), smoothing, loss.data(), grad.data());
      // Each loss's terms: q * |log p| over the row; each gradient's: p + q.
      std::vector<double> log_p(c.C);
      I correct = 0;
      for (I n = 0; n < c.N; ++n) {
        ref::softmax_forward(true, 1, c.C, 1, widened(logits).data() + n * c.C, log_p.data());
        loss_size[n] = 0;
        I best = 0;
        for (I k = 0; k < c.C; ++k) {
          const double q = (k == labels.data<I>()[n] ? 1 - smoothing : 0.0) + smoothing / double(c.C);
          loss_size[n] += q * std::fabs(log_p[k]);
          grad_size[n * c.C + k] = std::exp(log_p[k]) + q;
          if (logits[n * c.C + k] > logits[n * c.C + best]) best = k;
        }
        correct += best == labels.data<I>()[n];
      }
      double total = 0, total_size = 0;
      for (I n = 0; n < c.N; ++n) {
        total += loss[n];
        total_size += loss_size[n];
      }
      const std::vector<double> mean{total / double(c.N)}, mean_size{total_size / double(c.N)};
      const std::vector<double> sum{total}, sum_size{total_size};
      std::vector<double> mean_grad(grad), mean_grad_size(grad_size);
      for (I i = 0; i < c.N * c.C; ++i) {
        mean_grad[i] /= double(c.N);
        mean_grad_size[i] /= double(c.N);
      }
      const char* forward = "cross-entropy forward";
      const char* backward = "cross-entropy backward";
      guarded(checker, forward, [&] {
        checker.close(forward, what + " none",
                      values_of<T>(cross_entropy(tlogits, labels, Reduction::none, smoothing)), loss, loss_size,
                      Values::uniform, kTolerance<T>);
        checker.close(forward, what + " mean",
                      values_of<T>(cross_entropy(tlogits, labels, Reduction::mean, smoothing)), mean, mean_size,
                      Values::uniform, kTolerance<T>);
        checker.close(forward, what + " sum", values_of<T>(cross_entropy(tlogits, labels, Reduction::sum, smoothing)),
                      sum, sum_size, Values::uniform, kTolerance<T>);
      });
      guarded(checker, backward, [&] {
        checker.close(backward, what + " none",
                      values_of<T>(cross_entropy_backward(tlogits, labels, Reduction::none, smoothing)), grad,
                      grad_size, Values::uniform, kTolerance<T>);
        checker.close(backward, what + " mean",
                      values_of<T>(cross_entropy_backward(tlogits, labels, Reduction::mean, smoothing)), mean_grad,
                      mean_grad_size, Values::uniform, kTolerance<T>);
        // The training step's fused kernel: the mean loss, its gradient and the correct count.
        Tensor fused_grad = Tensor::full({c.N, c.C}, -5.0, kDType<T>);
        I fused_correct = -1;
        const double fused_loss = cross_entropy_mean_into(tlogits, labels, fused_grad, &fused_correct, smoothing);
        checker.close(backward, what + " fused mean loss", &fused_loss, mean.data(), mean_size.data(), 1,
                      kTolerance<T>);
        checker.close(backward, what + " fused gradient", values_of<T>(fused_grad), mean_grad, mean_grad_size,
                      Values::uniform, kTolerance<T>);
        checker.expect(backward, fused_correct == correct, what + " fused count of correct predictions");
      });
    }
}

template <class T>
void check_mse(Checker& checker, Data& data) {
  for (const Shape& shape : {Shape{1}, Shape{3, 5}, Shape{2, 3, 4, 5}}) {
    const I n = checked_numel(shape);
    const auto z = data.make<T>(n, Values::uniform), y = data.make<T>(n, Values::uniform);
    std::vector<double> squares(n), grad(n);
    double total = 0;
    for (I i = 0; i < n; ++i) {
      const double d = double(z[i]) - double(y[i]);
      squares[i] = d * d;
      grad[i] = 2 * d;
      total += d * d;
    }
    const Tensor tz = tensor_of<T>(shape, z), ty = tensor_of<T>(shape, y);
    const std::string what = "mse " + type_name<T>() + " " + shape_name(shape);
    struct Form {
      Reduction reduction;
      const char* name;
      double loss, grad_factor;
    };
    const Form forms[] = {{Reduction::mean, "mean", total / double(n), 1 / double(n)},
                          {Reduction::sum, "sum", total, 1.0},
                          {Reduction::half_sum, "half_sum", total / 2, 0.5}};
    checker.close("mse loss", what + " none", values_of<T>(mse_loss(tz, ty, Reduction::none)), squares,
                  magnitude_of(squares, 0.0), Values::uniform, kTolerance<T>);
    for (const Form& f : forms) {
      const std::vector<double> loss{f.loss};
      checker.close("mse loss", what + " " + f.name, values_of<T>(mse_loss(tz, ty, f.reduction)), loss,
                    magnitude_of(loss, 0.0), Values::uniform, kTolerance<T>);
      std::vector<double> want(n);
      for (I i = 0; i < n; ++i) want[i] = grad[i] * f.grad_factor;
      checker.close("mse loss", what + " " + f.name + " backward",
                    values_of<T>(mse_loss_backward(tz, ty, f.reduction)), want, magnitude_of(want, 0.0), Values::uniform,
                    kTolerance<T>);
    }
  }
}

// ---- Dropout ------------------------------------------------------------------------------

// Its mask depends on (seed, element) only: 0 or 1 / (1 - p), the same at every level (`first`,
// the first level's, empty there), about 1 - p of it kept; y = x * mask and grad_x = grad_y *
// mask exactly. The kernel takes the seed: the library's generator is not touched.
template <class T>
void check_dropout(Checker& checker, Data& data, std::vector<std::vector<T>>& first) {
  const double ps[] = {0.0, 0.3, 0.9};
  const I n = 1001;
  for (std::size_t k = 0; k < std::size(ps); ++k) {
    const double p = ps[k];
    const std::string what = "dropout " + type_name<T>() + " p=" + std::to_string(p).substr(0, 3);
    const auto x = data.make<T>(n, Values::uniform), gy = data.make<T>(n, Values::uniform);
    const Tensor tx = tensor_of<T>({n}, x);
    Tensor mask = Tensor::full({n}, -5.0, kDType<T>), y = Tensor::full({n}, -5.0, kDType<T>);
    cpu::dropout_forward(tx, p, 0x5e1f7e57 + k, mask, y);
    const std::vector<T> m = values_of<T>(mask);
    const T keep = static_cast<T>(1.0 / (1.0 - p));
    I kept = 0;
    bool valued = true;
    std::vector<T> want_y(n), want_gx(n);
    for (I i = 0; i < n; ++i) {
      valued = valued && (m[i] == T(0) || m[i] == keep);
      kept += m[i] != T(0);
      want_y[i] = x[i] * m[i];
      want_gx[i] = gy[i] * m[i];
    }
    checker.expect("dropout", valued, what + " mask holds 0 or 1 / (1 - p)");
    const double kept_share = double(kept) / double(n);
    checker.expect("dropout", std::fabs(kept_share - (1 - p)) < 0.1,
                   what + " keeps about 1 - p (kept " + std::to_string(kept_share) + ")");
    checker.same_bits("dropout", what + " y", values_of<T>(y), want_y);
    if (first.size() <= k)
      first.push_back(m);
    else
      checker.same_bits("dropout", what + " mask as at the first level", m, first[k]);
    Tensor gx = Tensor::full({n}, -5.0, kDType<T>);
    dropout_backward(tensor_of<T>({n}, gy), mask, gx);
    checker.same_bits("dropout", what + " backward", values_of<T>(gx), want_gx);
  }
}

// ---- bfloat16 rounding --------------------------------------------------------------------

// Mixed precision's rounding at this level against the scalar conversion of juanji/bfloat16.hpp,
// bit for bit, on data around every special case: ties of both parities and their neighbours,
// signed zeros, subnormals, the largest bfloat16 and past it, infinities and NaNs (made quiet).
void check_bfloat16_rounding(Checker& checker, Data& data) {
  std::vector<std::uint32_t> patterns = {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00008000u,
                                         0x00018000u, 0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,
                                         0x7f7f7fffu, 0x7f7f8000u, 0x7f7fffffu, 0x7f800000u, 0xff800000u,
                                         0x7fc00000u, 0xffa00001u, 0x7f800001u};
  for (const float v : data.make<float>(1000, Values::uniform)) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    patterns.push_back(bits);
  }
  const I n = static_cast<I>(patterns.size());
  Tensor x = Tensor::empty({n}, DType::float32), y = Tensor::full({n}, -5.0, DType::float32);
  std::memcpy(x.data_ptr(), patterns.data(), patterns.size() * sizeof(float));
  round_to_bfloat16_into(x, y);
  bool same = true;
  for (I i = 0; i < n; ++i) {
    const float want = float_from_bfloat16_bits(bfloat16_bits_from_float(x.data<float>()[i]));
    same = same && std::memcmp(&want, y.data<float>() + i, sizeof want) == 0;
  }
  checker.expect("bf16 rounding", same, "float32 -> bfloat16 (as float32) of " + std::to_string(n) +
                                            " values with every special case, bit for bit against the scalar one");
}

// ---- Optimizers ---------------------------------------------------------------------------

template <class T>
void check_optimizers(Checker& checker, Data& data) {
  const I sizes[] = {1, 37, 5000};  // in one parallel region, split over the team
  for (bool nesterov : {false, true})
    for (double momentum : {0.0, 0.9}) {
      if (nesterov && momentum == 0) continue;
      const SgdSettings settings{0.1, momentum, nesterov, 0.01};
      const std::string what = "sgd " + type_name<T>() + (momentum > 0 ? " momentum" : "") +
                               (nesterov ? " nesterov" : "") + " weight decay";
      std::vector<SgdSlot> slots;
      std::vector<std::vector<double>> w, v, g;
      for (I n : sizes) {
        slots.push_back({random_tensor<T>(data, {n}, Values::uniform), random_tensor<T>(data, {n}, Values::uniform),
                         momentum > 0 ? random_tensor<T>(data, {n}, Values::uniform) : Tensor()});
        w.push_back(widened(values_of<T>(slots.back().value)));
        g.push_back(widened(values_of<T>(slots.back().grad)));
        v.push_back(momentum > 0 ? widened(values_of<T>(slots.back().velocity)) : std::vector<double>());
      }
      sgd_update(slots, settings);
      for (std::size_t s = 0; s < slots.size(); ++s) {
        ref::sgd_update(sizes[s], w[s].data(), g[s].data(), momentum > 0 ? v[s].data() : nullptr, settings);
        checker.close("sgd update", what + " w", values_of<T>(slots[s].value), w[s], magnitude_of(w[s], largest(w[s])),
                      Values::uniform, kTolerance<T>);
        if (momentum > 0)
          checker.close("sgd update", what + " velocity", values_of<T>(slots[s].velocity), v[s],
                        magnitude_of(v[s], largest(v[s])), Values::uniform, kTolerance<T>);
      }
    }
  for (bool decoupled : {false, true}) {
    const AdamSettings settings{0.01, 0.9, 0.999, 1e-8, 0.01, decoupled};
    const I step = 3;
    const std::string what = std::string(decoupled ? "adamw " : "adam ") + type_name<T>();
    std::vector<AdamSlot> slots;
    std::vector<std::vector<double>> w, g, m, v;
    for (I n : sizes) {
      std::vector<T> second = data.make<T>(n, Values::uniform);
      for (T& value : second) value = std::fabs(value);
      slots.push_back({random_tensor<T>(data, {n}, Values::uniform), random_tensor<T>(data, {n}, Values::uniform),
                       random_tensor<T>(data, {n}, Values::uniform), tensor_of<T>({n}, second), step});
      w.push_back(widened(values_of<T>(slots.back().value)));
      g.push_back(widened(values_of<T>(slots.back().grad)));
      m.push_back(widened(values_of<T>(slots.back().exp_avg)));
      v.push_back(widened(second));
    }
    adam_update(slots, settings);
    for (std::size_t s = 0; s < slots.size(); ++s) {
      ref::adam_update(sizes[s], w[s].data(), g[s].data(), m[s].data(), v[s].data(), settings, step);
      checker.close("adam update", what + " w", values_of<T>(slots[s].value), w[s], magnitude_of(w[s], largest(w[s])),
                    Values::uniform, kTolerance<T>);
      checker.close("adam update", what + " m", values_of<T>(slots[s].exp_avg), m[s], magnitude_of(m[s], largest(m[s])),
                    Values::uniform, kTolerance<T>);
      checker.close("adam update", what + " v", values_of<T>(slots[s].exp_avg_sq), v[s], magnitude_of(v[s], largest(v[s])),
                    Values::uniform, kTolerance<T>);
    }
  }
  // Gradient clipping: the norm of all the gradients together, each scaled where it is too large.
  for (double max_norm : {1e3, 1.0}) {
    std::vector<Tensor> grads;
    std::vector<std::vector<double>> want;
    double squares = 0;
    for (I n : sizes) {
      grads.push_back(random_tensor<T>(data, {n}, Values::uniform));
      want.push_back(widened(values_of<T>(grads.back())));
      for (double value : want.back()) squares += value * value;
    }
    const double norm = std::sqrt(squares), factor = max_norm / (norm + 1e-6);
    const std::string what = "clip_grad_norm " + type_name<T>() + " max_norm " + std::to_string(max_norm);
    const double got = clip_grad_norm(grads, max_norm);
    checker.close("clip grad norm", what + " norm", &got, &norm, &norm, 1, kTolerance<double>);
    for (std::size_t s = 0; s < grads.size(); ++s) {
      if (factor < 1)
        for (double& value : want[s]) value *= factor;
      checker.close("clip grad norm", what + " gradients", values_of<T>(grads[s]), want[s], magnitude_of(want[s], 0.0),
                    Values::uniform, kTolerance<T>);
    }
  }
}

// ---- Gradients by finite differences (float64) --------------------------------------------

constexpr const char* kFiniteDifferences = "gradients (finite differences)";
constexpr double kStep = 1e-6, kFiniteDifferenceTolerance = 1e-6;

// The gradient of L = sum(weights * f()) with respect to the elements of `input`, which f reads,
// by central differences; against `analytic` within the tolerance times (the largest |gradient|
// + |gradient[i]|).
void expect_gradient(Checker& checker, const std::string& what, Tensor& input, const Tensor& analytic,
                     const std::function<Tensor()>& f, const std::vector<double>& weights) {
  const auto loss = [&] {
    const Tensor y = f();
    double sum = 0;
    for (I i = 0; i < y.numel(); ++i) sum += weights[i] * y.data<double>()[i];
    return sum;
  };
  double* v = input.data<double>();
  std::vector<double> numeric(input.numel());
  for (I i = 0; i < input.numel(); ++i) {
    const double saved = v[i];
    v[i] = saved + kStep;
    const double up = loss();
    v[i] = saved - kStep;
    const double down = loss();
    v[i] = saved;
    numeric[i] = (up - down) / (2 * kStep);
  }
  checker.close(kFiniteDifferences, what, analytic.data<double>(), numeric.data(),
                magnitude_of(numeric, std::max(largest(numeric), 1e-3)).data(), numeric.size(), kFiniteDifferenceTolerance);
}

void check_finite_differences(Checker& checker, Data& data) {
  const auto uniform = [&](const Shape& shape) { return random_tensor<double>(data, shape, Values::uniform); };
  const auto weights = [&](const Shape& shape) { return data.make<double>(checked_numel(shape), Values::uniform); };
  // Convolutions: 2-d strided, dilated and grouped; 1-d with the stride above the kernel.
  {
    const ConvOptions options = conv_options({2, 1}, {1, 1}, {1, 2}, 2);
    Tensor x = uniform({2, 4, 5, 6}), w = uniform({6, 2, 3, 2}), b = uniform({6});
    const auto f = [&] { return conv2d(x, w, b, options); };
    const Tensor y = f();
    const auto r = weights(y.shape());
    const ConvGrads grads = conv2d_backward(tensor_of<double>(y.shape(), r), x, w, options);
    expect_gradient(checker, "conv2d grad_x", x, grads.grad_x, f, r);
    expect_gradient(checker, "conv2d grad_w", w, grads.grad_w, f, r);
    expect_gradient(checker, "conv2d grad_b", b, grads.grad_b, f, r);
  }
  {
    const ConvOptions options = conv_options({3}, {1});
    Tensor x = uniform({2, 3, 11}), w = uniform({4, 3, 2}), b = uniform({4});
    const auto f = [&] { return conv1d(x, w, b, options); };
    const Tensor y = f();
    const auto r = weights(y.shape());
    const ConvGrads grads = conv1d_backward(tensor_of<double>(y.shape(), r), x, w, options);
    expect_gradient(checker, "conv1d grad_x", x, grads.grad_x, f, r);
    expect_gradient(checker, "conv1d grad_w", w, grads.grad_w, f, r);
  }
  {
    Tensor x = uniform({3, 5}), w = uniform({4, 5}), b = uniform({4});
    const auto f = [&] { return linear(x, w, b); };
    const auto r = weights({3, 4});
    const LinearGrads grads = linear_backward(tensor_of<double>({3, 4}, r), x, w);
    expect_gradient(checker, "linear grad_x", x, grads.grad_x, f, r);
    expect_gradient(checker, "linear grad_w", w, grads.grad_w, f, r);
    expect_gradient(checker, "linear grad_b", b, grads.grad_b, f, r);
  }
  {
    // Batch norm in training: the batch statistics depend on x.
    const Shape shape{2, 3, 3, 4};
    Tensor x = uniform(shape), gamma = uniform({3}), beta = uniform({3});
    const auto f = [&] {
      Tensor running_mean = Tensor::zeros({3}, DType::float64), running_var = Tensor::full({3}, 1.0, DType::float64);
      Tensor y = Tensor::empty(shape, DType::float64), mean = Tensor::empty({3}, DType::float64);
      Tensor invstd = Tensor::empty({3}, DType::float64);
      batch_norm2d_forward(x, gamma, beta, running_mean, running_var, true, 0.1, 1e-5, y, mean, invstd);
      return y;
    };
    Tensor running_mean = Tensor::zeros({3}, DType::float64), running_var = Tensor::full({3}, 1.0, DType::float64);
    Tensor y = Tensor::empty(shape, DType::float64), mean = Tensor::empty({3}, DType::float64);
    Tensor invstd = Tensor::empty({3}, DType::float64);
    batch_norm2d_forward(x, gamma, beta, running_mean, running_var, true, 0.1, 1e-5, y, mean, invstd);
    const auto r = weights(shape);
    Tensor gx = Tensor::empty(shape, DType::float64), ggamma = Tensor::empty({3}, DType::float64);
    Tensor gbeta = Tensor::empty({3}, DType::float64);
    batch_norm2d_backward(tensor_of<double>(shape, r), x, gamma, mean, invstd, gx, ggamma, gbeta);
    expect_gradient(checker, "batch norm grad_x", x, gx, f, r);
    expect_gradient(checker, "batch norm grad_gamma", gamma, ggamma, f, r);
    expect_gradient(checker, "batch norm grad_beta", beta, gbeta, f, r);
  }
  for (bool log : {false, true}) {
    Tensor x = uniform({2, 4, 3});
    const auto f = [&] { return log ? log_softmax(x, 1) : softmax(x, 1); };
    const auto r = weights(x.shape());
    const Tensor gy = tensor_of<double>(x.shape(), r);
    expect_gradient(checker, log ? "log_softmax grad_x" : "softmax grad_x", x,
                    log ? log_softmax_backward(gy, x, 1) : softmax_backward(gy, x, 1), f, r);
  }
  {
    Tensor logits = uniform({4, 5});
    const Tensor labels = labels_tensor(data, 4, 5);
    const auto f = [&] { return cross_entropy(logits, labels, Reduction::mean, 0.1); };
    expect_gradient(checker, "cross-entropy grad_logits", logits,
                    cross_entropy_backward(logits, labels, Reduction::mean, 0.1), f, {1.0});
  }
  {
    Tensor z = uniform({3, 4});
    const Tensor y = uniform({3, 4});
    const auto f = [&] { return mse_loss(z, y, Reduction::mean); };
    expect_gradient(checker, "mse grad_z", z, mse_loss_backward(z, y, Reduction::mean), f, {1.0});
  }
  for (Activation kind : {Activation::sigmoid, Activation::tanh}) {
    Tensor x = uniform({2, 7});
    const auto f = [&] { return activation(kind, x); };
    const auto r = weights(x.shape());
    expect_gradient(checker, std::string(activation_name(kind)) + " grad_x", x,
                    activation_backward(kind, tensor_of<double>(x.shape(), r), x), f, r);
  }
  {
    // Pooling: average with ceil mode and padding left out of the divisor, max (no ties among
    // uniform values), global average.
    PoolOptions options;
    options.kernel = {3};
    options.stride = {2};
    options.padding = {1};
    options.ceil_mode = true;
    options.count_include_pad = false;
    Tensor x = uniform({2, 2, 6, 7});
    const auto pool_grad = [&](const char* name, auto forward, auto backward) {
      const auto f = [&] { return forward(x, options); };
      const Tensor y = f();
      const auto r = weights(y.shape());
      expect_gradient(checker, name, x, backward(tensor_of<double>(y.shape(), r), x, options), f, r);
    };
    pool_grad("avg_pool2d grad_x", avg_pool2d, avg_pool2d_backward);
    pool_grad("max_pool2d grad_x", max_pool2d, max_pool2d_backward);
    Tensor x1 = uniform({2, 3, 9});
    const auto f1 = [&] { return avg_pool1d(x1, options); };
    const auto r1 = weights(f1().shape());
    expect_gradient(checker, "avg_pool1d grad_x", x1,
                    avg_pool1d_backward(tensor_of<double>(f1().shape(), r1), x1, options), f1, r1);
    const auto fg = [&] { return global_avg_pool2d(x); };
    const auto rg = weights({2, 2, 1, 1});
    expect_gradient(checker, "global_avg_pool2d grad_x", x,
                    global_avg_pool2d_backward(tensor_of<double>({2, 2, 1, 1}, rg), x), fg, rg);
  }
}

// ---- The run ------------------------------------------------------------------------------

// The settings the self-test changes, restored when it ends (an exception included).
class Settings {
 public:
  Settings() : level_(simd_level()), threads_(get_num_threads()), winograd_(set_winograd(true)) {
    for (std::size_t i = 0; i < std::size(kPasses); ++i) forced_[i] = set_conv_algorithm(kPasses[i], "");
  }
  ~Settings() {
    set_simd_level(level_);
    set_num_threads(threads_);
    set_winograd(winograd_);
    for (std::size_t i = 0; i < std::size(kPasses); ++i) set_conv_algorithm(kPasses[i], forced_[i]);
  }
  Settings(const Settings&) = delete;
  Settings& operator=(const Settings&) = delete;
  SimdLevel level() const { return level_; }
  int threads() const { return threads_; }

 private:
  static constexpr ConvPass kPasses[] = {ConvPass::forward, ConvPass::data_grad, ConvPass::weight_grad};
  SimdLevel level_;
  int threads_;
  bool winograd_;
  std::string forced_[3];
};

// The convolutions at `levels`: the references once per case, the library at each level.
void check_convolutions(Checker& checker, const std::vector<SimdLevel>& levels, ConvCoverage& coverage) {
  Data data(2024);
  for (const ConvCase& c : conv_cases())
    guarded(checker, "conv", [&] { check_conv_case<float>(checker, c, data, levels, coverage); });
  for (const ConvCase& c : conv_cases_f64())
    guarded(checker, "conv", [&] { check_conv_case<double>(checker, c, data, levels, coverage); });
}

template <class T>
void check_per_level(Checker& checker, Data& data, std::vector<std::vector<T>>& dropout_masks) {
  guarded(checker, "gemm", [&] { check_gemm<T>(checker, gemm_shapes(), data); });
  check_pooling<T>(checker, pool_cases(), data);
  check_batch_norm<T>(checker, norm_shapes(), data);
  check_norm_relu_max_pool<T>(checker, fused_norm_shapes(), fused_pools(), data);
  check_linear<T>(checker, data);
  guarded(checker, "global avg pool", [&] { check_global_avg_pool<T>(checker, data); });
  guarded(checker, "activation forward", [&] { check_activations<T>(checker, data); });
  guarded(checker, "add (+ ReLU)", [&] { check_add<T>(checker, data); });
  check_softmax<T>(checker, data);
  check_cross_entropy<T>(checker, data);
  guarded(checker, "mse loss", [&] { check_mse<T>(checker, data); });
  guarded(checker, "dropout", [&] { check_dropout<T>(checker, data, dropout_masks); });
  guarded(checker, "sgd update", [&] { check_optimizers<T>(checker, data); });
  if constexpr (std::is_same_v<T, float>)
    guarded(checker, "bf16 rounding", [&] { check_bfloat16_rounding(checker, data); });
}

}  // namespace
}  // namespace selftest

std::vector<SelftestRow> run_selftest() {
  using namespace selftest;
  const Settings restore;
  const std::vector<SimdLevel> levels = supported_levels();
  Checker checker;
  // Every level on one thread: what differs between levels is the kernels' arithmetic, and
  // hundreds of tiny parallel regions cost more than their work (far more where other processes
  // share the cores: a team waits for its descheduled threads).
  set_num_threads(1);
  ConvCoverage coverage;
  check_convolutions(checker, levels, coverage);
  check_conv_coverage(checker, coverage, levels);
  std::vector<std::vector<float>> masks_f32;
  std::vector<std::vector<double>> masks_f64;
  const auto check_level = [&](SimdLevel level, bool finite_differences) {
    set_simd_level(level);
    Data data(7);  // the same data at every level
    check_per_level<float>(checker, data, masks_f32);
    check_per_level<double>(checker, data, masks_f64);
    if (finite_differences)
      guarded(checker, kFiniteDifferences, [&] { check_finite_differences(checker, data); });
  };
  for (SimdLevel level : levels) check_level(level, true);
  // Then the level in use once more on the threads in use, which split the work of most ops
  // (rows of that level).
  if (restore.threads() > 1) {
    set_num_threads(restore.threads());
    check_convolutions(checker, {restore.level()}, coverage);
    check_level(restore.level(), false);
  }
  // Level by level; in each, the convolutions' rows pass by pass in the tables' order, then the
  // other rows in the order they first appeared.
  std::vector<std::string> conv_rows;
  const ConvGeometry any = ConvGeometry::make({1, 1, 3, 3}, {1, 1, 3, 3}, ConvOptions(), 2);
  for (ConvPass pass : {ConvPass::forward, ConvPass::data_grad, ConvPass::weight_grad})
    for (const ConvAlgorithmChoice& algorithm : conv_algorithms(pass, any, DType::float32, Tensor::zeros({1, 1, 3, 3})))
      conv_rows.push_back(conv_row(pass, algorithm.name));
  const auto key = [&](const SelftestRow& row) {
    std::size_t level = 0;
    while (level < levels.size() && row.level != simd_name(levels[level])) ++level;
    const auto at = std::find(conv_rows.begin(), conv_rows.end(), row.op);
    return std::make_pair(level, static_cast<std::size_t>(at - conv_rows.begin()));
  };
  std::vector<SelftestRow> rows = checker.rows();
  std::stable_sort(rows.begin(), rows.end(),
                   [&](const SelftestRow& a, const SelftestRow& b) { return key(a) < key(b); });
  return rows;
}

}  // namespace juanji
