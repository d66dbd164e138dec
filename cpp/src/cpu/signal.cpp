// Signal convolution. Every mode of every op is a window of the full true convolution: correlation
// is convolution with the reversed kernel, and 'same'/'valid' only choose where the window starts
// (numpy's and scipy's rules below). Kernels accumulate shifted copies of the longer input
// (axpy over contiguous runs, which vectorises); each output element sums its taps in a fixed
// order whatever the thread count.
#include "cpu/signal.hpp"

#include <algorithm>
#include <vector>

#include "cpu/op_support.hpp"
#include "juanji/runtime.hpp"

namespace juanji::cpu {
namespace {

// out[o] = (f * g)[start + o] for o in [0, len): f (n), g (m), out (len).
template <class T>
void convolve_window(const T* f, std::int64_t n, const T* g, std::int64_t m, std::int64_t start,
                     std::int64_t len, T* out) {
  if (n < m) {  // convolution commutes: keep the longer input in the inner loop
    std::swap(f, g);
    std::swap(n, m);
  }
  constexpr std::int64_t chunk = 4096;
  const std::int64_t chunks = (len + chunk - 1) / chunk;
  // The work count in double: it can pass int64's range.
  const bool parallel = static_cast<double>(len) * m >= cpu::kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t o0 = c * chunk;
    const std::int64_t o1 = std::min(len, o0 + chunk);
    std::fill(out + o0, out + o1, T(0));
    const std::int64_t t0 = start + o0;
    const std::int64_t t1 = start + o1;
    for (std::int64_t q = 0; q < m; ++q) {
      const T gq = g[q];
      const std::int64_t lo = std::max(t0, q);
      const std::int64_t hi = std::min(t1, q + n);
      T* dst = out - start;
      const T* src = f - q;
      for (std::int64_t t = lo; t < hi; ++t) dst[t] += gq * src[t];
    }
  }
}

// out[i, j] = (a * k)[r0 + i, c0 + j]: a (H,W), k (R,S), out (rows, cols).
template <class T>
void convolve2d_window(const T* a, std::int64_t H, std::int64_t W, const T* k, std::int64_t R,
                       std::int64_t S, std::int64_t r0, std::int64_t c0, std::int64_t rows,
                       std::int64_t cols, T* out) {
  if (W < S) {  // convolution commutes: keep the wider input in the inner loop
    std::swap(a, k);
    std::swap(H, R);
    std::swap(W, S);
  }
  // The work count in double: it can pass int64's range.
  const bool parallel = static_cast<double>(rows) * cols * R * S >= cpu::kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
  for (std::int64_t i = 0; i < rows; ++i) {
    T* dst = out + i * cols - c0;  // dst[y] is full column y
    std::fill(dst + c0, dst + c0 + cols, T(0));
    const std::int64_t x = r0 + i;
    for (std::int64_t p = std::max<std::int64_t>(0, x - H + 1); p < std::min(R, x + 1); ++p) {
      const T* a_row = a + (x - p) * W;
      for (std::int64_t q = 0; q < S; ++q) {
        const T kpq = k[p * S + q];
        const std::int64_t lo = std::max(c0, q);
        const std::int64_t hi = std::min(c0 + cols, q + W);
        const T* src = a_row - q;
        for (std::int64_t y = lo; y < hi; ++y) dst[y] += kpq * src[y];
      }
    }
  }
}

}  // namespace

void convolve_window(const Tensor& f, const Tensor& g, bool correlation, std::int64_t start, Tensor& out) {
  dispatch_float(f.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gd = g.data<T>();
    std::vector<T> reversed;
    if (correlation) {  // correlation is convolution with the reversed kernel
      reversed.assign(gd, gd + g.numel());
      std::reverse(reversed.begin(), reversed.end());
      gd = reversed.data();
    }
    convolve_window(f.data<T>(), f.numel(), gd, g.numel(), start, out.numel(), out.data<T>());
  });
}

void convolve2d_window(const Tensor& a, const Tensor& k, bool correlation, std::int64_t r0, std::int64_t c0,
                       Tensor& out) {
  const std::int64_t R = k.size(0), S = k.size(1);
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* kd = k.data<T>();
    std::vector<T> rotated;
    if (correlation) {  // correlation is convolution with the kernel turned by 180 degrees
      rotated.assign(kd, kd + R * S);
      std::reverse(rotated.begin(), rotated.end());
      kd = rotated.data();
    }
    convolve2d_window(a.data<T>(), a.size(0), a.size(1), kd, R, S, r0, c0, out.size(0), out.size(1),
                      out.data<T>());
  });
}

}  // namespace juanji::cpu
