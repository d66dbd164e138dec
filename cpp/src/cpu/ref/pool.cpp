#include <algorithm>

#include "cpu/ref/reference.hpp"

namespace juanji::cpu::ref {
namespace {

// One dim of a window: its elements [begin, end) inside the input and its divisor extent.
struct WindowSpan {
  std::int64_t begin, end, divisor;
};

WindowSpan window_span(std::int64_t index, std::int64_t size, std::int64_t kernel, std::int64_t stride,
                       std::int64_t pad, bool count_include_pad) {
  const std::int64_t start = index * stride - pad;
  const std::int64_t begin = std::max<std::int64_t>(start, 0), end = std::min(start + kernel, size);
  const std::int64_t padded_end = std::min(start + kernel, size + pad);
  return {begin, end, count_include_pad ? padded_end - start : end - begin};
}

// Calls window(plane, p, q, rows, cols) for every window of every plane.
template <class Window>
void for_each_window(const PoolGeometry& g, Window window) {
  for (std::int64_t plane = 0; plane < g.N * g.C; ++plane)
    for (std::int64_t p = 0; p < g.P; ++p)
      for (std::int64_t q = 0; q < g.Q; ++q)
        window(plane, p, q, window_span(p, g.H, g.kernel_h, g.stride_h, g.pad_h, g.count_include_pad),
               window_span(q, g.W, g.kernel_w, g.stride_w, g.pad_w, g.count_include_pad));
}

}  // namespace

template <class T>
void max_pool_forward(const PoolGeometry& g, const T* x, T* y, std::int64_t* argmax_or_null) {
  for_each_window(g, [&](std::int64_t plane, std::int64_t p, std::int64_t q, WindowSpan rows, WindowSpan cols) {
    const T* in = x + plane * g.H * g.W;
    std::int64_t best = rows.begin * g.W + cols.begin;
    for (std::int64_t h = rows.begin; h < rows.end; ++h)
      for (std::int64_t v = cols.begin; v < cols.end; ++v) {
        const T value = in[h * g.W + v];
        const bool best_is_nan = in[best] != in[best];
        if (!best_is_nan && (value != value || value > in[best])) best = h * g.W + v;
      }
    const std::int64_t out = (plane * g.P + p) * g.Q + q;
    y[out] = in[best];
    if (argmax_or_null) argmax_or_null[out] = best;
  });
}

template <class T>
void max_pool_backward(const PoolGeometry& g, const T* grad_y, const std::int64_t* argmax, T* grad_x) {
  const std::int64_t area = g.H * g.W;
  std::fill(grad_x, grad_x + g.N * g.C * area, T(0));
  for_each_window(g, [&](std::int64_t plane, std::int64_t p, std::int64_t q, WindowSpan, WindowSpan) {
    const std::int64_t out = (plane * g.P + p) * g.Q + q;
    if (argmax[out] >= 0 && argmax[out] < area) grad_x[plane * area + argmax[out]] += grad_y[out];
  });
}

template <class T>
void avg_pool_forward(const PoolGeometry& g, const T* x, T* y) {
  for_each_window(g, [&](std::int64_t plane, std::int64_t p, std::int64_t q, WindowSpan rows, WindowSpan cols) {
    T sum = 0;
    for (std::int64_t h = rows.begin; h < rows.end; ++h)
      for (std::int64_t v = cols.begin; v < cols.end; ++v) sum += x[(plane * g.H + h) * g.W + v];
    y[(plane * g.P + p) * g.Q + q] = sum / static_cast<T>(rows.divisor * cols.divisor);
  });
}

template <class T>
void avg_pool_backward(const PoolGeometry& g, const T* grad_y, T* grad_x) {
  std::fill(grad_x, grad_x + g.N * g.C * g.H * g.W, T(0));
  for_each_window(g, [&](std::int64_t plane, std::int64_t p, std::int64_t q, WindowSpan rows, WindowSpan cols) {
    const T share = grad_y[(plane * g.P + p) * g.Q + q] / static_cast<T>(rows.divisor * cols.divisor);
    for (std::int64_t h = rows.begin; h < rows.end; ++h)
      for (std::int64_t v = cols.begin; v < cols.end; ++v) grad_x[(plane * g.H + h) * g.W + v] += share;
  });
}

template void max_pool_forward(const PoolGeometry&, const float*, float*, std::int64_t*);
template void max_pool_forward(const PoolGeometry&, const double*, double*, std::int64_t*);
template void max_pool_backward(const PoolGeometry&, const float*, const std::int64_t*, float*);
template void max_pool_backward(const PoolGeometry&, const double*, const std::int64_t*, double*);
template void avg_pool_forward(const PoolGeometry&, const float*, float*);
template void avg_pool_forward(const PoolGeometry&, const double*, double*);
template void avg_pool_backward(const PoolGeometry&, const float*, float*);
template void avg_pool_backward(const PoolGeometry&, const double*, double*);

}  // namespace juanji::cpu::ref
