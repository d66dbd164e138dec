// Signal convolution's ops layer: the modes' windows (numpy's and scipy's rules), the checks and
// the kernel constructors; the CPU computes the windows (cpu/signal.cpp).
#include "juanji/ops/signal.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/checked_math.hpp"
#include "cpu/op_support.hpp"
#include "cpu/signal.hpp"
#include "ops/checks.hpp"

namespace juanji {
namespace {

using cpu::dispatch_float;
using ops::check_float_cpu;

void check_signal_input(const Tensor& t, const char* op, const char* name, int dims) {
  check_float_cpu(t, op, name);
  check(t.dim() == dims, op, ": ", name, ": expected a ", dims, "-d tensor, got shape ",
        shape_text(t.shape()));
  check(t.numel() > 0, op, ": ", name, " must not be empty, got shape ", shape_text(t.shape()));
}

// The output of two inputs can be larger than a tensor may be (the 'full' mode's sizes add up).
void check_signal_output(const Shape& out, const char* op, const char* a_name, const Tensor& a,
                         const char* b_name, const Tensor& b) {
  check(allocatable_numel(out).has_value(), op, ": the output ", shape_text(out), " of ", a_name, " ",
        shape_text(a.shape()), " and ", b_name, " ", shape_text(b.shape()), " has too many elements");
}

Tensor signal_1d(const Tensor& f_in, const Tensor& g_in, SignalMode mode, bool correlation,
                 const char* op) {
  check_signal_input(f_in, op, "f", 1);
  check_signal_input(g_in, op, "g", 1);
  check_same_dtype(f_in, "f", g_in, "g");
  const std::int64_t n = f_in.numel();
  const std::int64_t m = g_in.numel();
  const std::int64_t big = std::max(n, m);
  const std::int64_t small = std::min(n, m);
  std::int64_t start = 0;
  std::int64_t len = n + m - 1;
  if (mode == SignalMode::valid) {
    start = small - 1;
    len = big - small + 1;
  } else if (mode == SignalMode::same) {
    // numpy.correlate swaps a longer g to the front and reverses the result, which moves the
    // window by one for even lengths.
    if (correlation)
      start = n >= m ? (m - 1) / 2 : n / 2;
    else
      start = (small - 1) / 2;
    len = big;
  }
  check_signal_output({len}, op, "f", f_in, "g", g_in);
  const Tensor f = f_in.contiguous();
  const Tensor g = g_in.contiguous();
  Tensor out = Tensor::empty({len}, f.dtype());
  cpu::convolve_window(f, g, correlation, start, out);
  return out;
}

Tensor signal_2d(const Tensor& a_in, const Tensor& k_in, SignalMode mode, bool correlation,
                 const char* op) {
  check_signal_input(a_in, op, "a", 2);
  check_signal_input(k_in, op, "k", 2);
  check_same_dtype(a_in, "a", k_in, "k");
  const std::int64_t H = a_in.size(0), W = a_in.size(1);
  const std::int64_t R = k_in.size(0), S = k_in.size(1);
  std::int64_t r0 = 0, c0 = 0, rows = H + R - 1, cols = W + S - 1;
  if (mode == SignalMode::same) {
    // scipy centres 'same' on the shape of a; correlation's window sits one further for even k.
    r0 = correlation ? R / 2 : (R - 1) / 2;
    c0 = correlation ? S / 2 : (S - 1) / 2;
    rows = H;
    cols = W;
  } else if (mode == SignalMode::valid) {
    const bool a_covers = H >= R && W >= S;
    const bool k_covers = H <= R && W <= S;
    check(a_covers || k_covers, op, ": in 'valid' mode one input must be at least as large as ",
          "the other in every dimension, got a ", shape_text(a_in.shape()), " and k ",
          shape_text(k_in.shape()));
    r0 = std::min(H, R) - 1;
    c0 = std::min(W, S) - 1;
    rows = std::max(H, R) - std::min(H, R) + 1;
    cols = std::max(W, S) - std::min(W, S) + 1;
  }
  check_signal_output({rows, cols}, op, "a", a_in, "k", k_in);
  const Tensor a = a_in.contiguous();
  const Tensor k = k_in.contiguous();
  Tensor out = Tensor::empty({rows, cols}, a.dtype());
  cpu::convolve2d_window(a, k, correlation, r0, c0, out);
  return out;
}

void check_kernel_dtype(DType dtype, const char* op) {
  check_type(dtype == DType::float32 || dtype == DType::float64, "kernels.", op,
             ": dtype must be float32 or float64, got ", dtype_name(dtype));
}

// Before the n * n values are computed: a tensor of (n, n) must be possible.
void check_kernel_size(std::int64_t n, const char* op) {
  check(allocatable_numel({n, n}).has_value(), "kernels.", op, ": n = ", n,
        " makes a kernel of too many elements");
}

Tensor kernel_from(const std::vector<double>& values, std::int64_t n, DType dtype) {
  Tensor t = Tensor::empty({n, n}, dtype);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* d = t.data<T>();
    for (std::size_t i = 0; i < values.size(); ++i) d[i] = static_cast<T>(values[i]);
  });
  return t;
}

}  // namespace

SignalMode parse_signal_mode(const std::string& mode, const char* op) {
  if (mode == "full") return SignalMode::full;
  if (mode == "same") return SignalMode::same;
  if (mode == "valid") return SignalMode::valid;
  throw std::invalid_argument(detail::concat(op, ": mode must be 'full', 'same' or 'valid', got '",
                                             mode, "'"));
}

// f (n), g (m) -> full (n+m-1), same (max(n,m)), valid (max-min+1).
Tensor convolve(const Tensor& f, const Tensor& g, SignalMode mode) {
  return signal_1d(f, g, mode, false, "convolve");
}

Tensor correlate(const Tensor& f, const Tensor& g, SignalMode mode) {
  return signal_1d(f, g, mode, true, "correlate");
}

// a (H,W), k (R,S) -> full (H+R-1, W+S-1), same (H,W), valid (|H-R|+1, |W-S|+1).
Tensor convolve2d(const Tensor& a, const Tensor& k, SignalMode mode) {
  return signal_2d(a, k, mode, false, "convolve2d");
}

Tensor correlate2d(const Tensor& a, const Tensor& k, SignalMode mode) {
  return signal_2d(a, k, mode, true, "correlate2d");
}

namespace kernels {

Tensor box(std::int64_t n, DType dtype) {
  check_kernel_dtype(dtype, "box");
  check(n >= 1, "kernels.box: n must be positive, got ", n);
  check_kernel_size(n, "box");
  return kernel_from(std::vector<double>(n * n, 1.0 / static_cast<double>(n * n)), n, dtype);
}

// Samples exp(-(i-c)^2 / (2 sigma^2)) about the centre c = (n-1)/2, normalised to sum 1.
Tensor gaussian(std::int64_t n, double sigma, DType dtype) {
  check_kernel_dtype(dtype, "gaussian");
  check(n >= 1, "kernels.gaussian: n must be positive, got ", n);
  check_kernel_size(n, "gaussian");
  check(std::isfinite(sigma) && sigma > 0, "kernels.gaussian: sigma must be positive, got ",
        sigma);
  const double c = (n - 1) / 2.0;
  std::vector<double> g1(n);
  double sum = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double t = i - c;
    g1[i] = std::exp(-(t * t) / (2.0 * sigma * sigma));
    sum += g1[i];
  }
  std::vector<double> values(n * n);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) values[i * n + j] = (g1[i] / sum) * (g1[j] / sum);
  return kernel_from(values, n, dtype);
}

Tensor laplacian(DType dtype) {
  check_kernel_dtype(dtype, "laplacian");
  return kernel_from({0, 1, 0, 1, -4, 1, 0, 1, 0}, 3, dtype);
}

Tensor sobel_x(DType dtype) {
  check_kernel_dtype(dtype, "sobel_x");
  return kernel_from({-1, 0, 1, -2, 0, 2, -1, 0, 1}, 3, dtype);
}

Tensor sobel_y(DType dtype) {
  check_kernel_dtype(dtype, "sobel_y");
  return kernel_from({-1, -2, -1, 0, 0, 0, 1, 2, 1}, 3, dtype);
}

}  // namespace kernels
}  // namespace juanji
