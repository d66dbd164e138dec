// Fully connected layer (the seeds' BP network) through the packed GEMM, and for a forward on a
// few rows through dot products with w's rows:
//   y = x w^T + b,  dx = dy w,  dw = dy^T x,  db = column sums of dy.
#include "cpu/linear.hpp"

#include <algorithm>
#include <type_traits>

#include "cpu/gemm.hpp"
#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"

namespace juanji::cpu {
namespace {

// Up to this many rows of x (a few images at inference), float32 outputs come from dot products
// straight from w's rows, which reads w once; the GEMM would pack all of w for a few rows.
constexpr std::int64_t kFewRows = 8;

void forward_few_rows(std::int64_t N, std::int64_t in, std::int64_t out, const float* x, const float* w,
                      const float* b, float* y) {
  const DotRows dot_rows = active_kernels().dot_rows_f32;
  // Each part is a run of w's rows; an output's sum does not depend on how they are split.
  const std::int64_t parts = ::juanji::team_size();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * in * out > 65536)
  for (std::int64_t part = 0; part < parts; ++part) {
    const std::int64_t begin = out * part / parts, end = out * (part + 1) / parts;
    dot_rows(x, N, w + begin * in, end - begin, in, y + begin, out);
    if (b)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t o = begin; o < end; ++o) y[n * out + o] = b[o] + y[n * out + o];
  }
}

template <class T>
void forward_impl(std::int64_t N, std::int64_t in, std::int64_t out, const T* x, const T* w,
                  const T* b, T* y) {
  // x (N, in), w (out, in), b (out) or null, y (N, out)
  if constexpr (std::is_same_v<T, float>) {
    if (N <= kFewRows) return forward_few_rows(N, in, out, x, w, b, y);
  }
  if (b)
    for (std::int64_t n = 0; n < N; ++n) std::copy(b, b + out, y + n * out);
  gemm<T>(N, out, in, {x, in, 1}, {w, 1, in}, y, out, b != nullptr, true);
}

template <class T>
void backward_impl(std::int64_t N, std::int64_t in, std::int64_t out, const T* dy, const T* x,
                   const T* w, T* dx, T* dw, T* db) {
  // dy (N, out); dx (N, in), dw (out, in), db (out): each may be null (not wanted)
  if (dx) gemm<T>(N, in, out, {dy, out, 1}, {w, in, 1}, dx, in, false, true);
  if (dw) gemm<T>(out, in, N, {dy, 1, out}, {x, in, 1}, dw, in, false, true);
  if (db) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * out > 100000)
    for (std::int64_t o = 0; o < out; ++o) {
      double sum = 0;
      for (std::int64_t n = 0; n < N; ++n) sum += dy[n * out + o];
      db[o] = static_cast<T>(sum);
    }
  }
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  const std::int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  if (x.dtype() == DType::float32)
    forward_impl<float>(N, in, out, x.data<float>(), w.data<float>(), data_or_null<float>(b), y.data<float>());
  else
    forward_impl<double>(N, in, out, x.data<double>(), w.data<double>(), data_or_null<double>(b),
                         y.data<double>());
}

void linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                     Tensor& grad_w, Tensor& grad_b) {
  const std::int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  if (x.dtype() == DType::float32)
    backward_impl<float>(N, in, out, grad_y.data<float>(), x.data<float>(), w.data<float>(),
                         data_or_null<float>(grad_x), data_or_null<float>(grad_w), data_or_null<float>(grad_b));
  else
    backward_impl<double>(N, in, out, grad_y.data<double>(), x.data<double>(), w.data<double>(),
                          data_or_null<double>(grad_x), data_or_null<double>(grad_w),
                          data_or_null<double>(grad_b));
}

}  // namespace juanji::cpu
