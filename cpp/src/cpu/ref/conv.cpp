// The convolution's three passes share one loop nest over every product the definition has.
#include <algorithm>

#include "cpu/ref/reference.hpp"

namespace juanji::cpu::ref {
namespace {

// Calls product(y_index, x_index, w_index) for every (n, k, p, q, c, r, s) whose input position
// lies inside the input, in that loop order.
template <class Product>
void for_each_product(const ConvGeometry& g, Product product) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t k = 0; k < g.K; ++k)
      for (std::int64_t p = 0; p < g.P; ++p)
        for (std::int64_t q = 0; q < g.Q; ++q) {
          const std::int64_t y_index = ((n * g.K + k) * g.P + p) * g.Q + q;
          for (std::int64_t c = 0; c < Cg; ++c) {
            const std::int64_t channel = k / Kg * Cg + c;
            for (std::int64_t r = 0; r < g.R; ++r) {
              const std::int64_t h = p * g.stride_h - g.pad_top + r * g.dil_h;
              if (h < 0 || h >= g.H) continue;
              for (std::int64_t s = 0; s < g.S; ++s) {
                const std::int64_t v = q * g.stride_w - g.pad_left + s * g.dil_w;
                if (v < 0 || v >= g.W) continue;
                product(y_index, ((n * g.C + channel) * g.H + h) * g.W + v, ((k * Cg + c) * g.R + r) * g.S + s);
              }
            }
          }
        }
}

}  // namespace

template <class T>
void conv_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias_or_null, T* y) {
  std::fill(y, y + g.N * g.K * g.P * g.Q, T(0));
  for_each_product(g, [&](std::int64_t yi, std::int64_t xi, std::int64_t wi) { y[yi] += w[wi] * x[xi]; });
  if (!bias_or_null) return;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t k = 0; k < g.K; ++k)
      for (std::int64_t i = 0; i < g.P * g.Q; ++i) y[(n * g.K + k) * g.P * g.Q + i] += bias_or_null[k];
}

template <class T>
void conv_backward_data(const ConvGeometry& g, const T* grad_y, const T* w, T* grad_x) {
  std::fill(grad_x, grad_x + g.N * g.C * g.H * g.W, T(0));
  for_each_product(g, [&](std::int64_t yi, std::int64_t xi, std::int64_t wi) { grad_x[xi] += w[wi] * grad_y[yi]; });
}

template <class T>
void conv_backward_weight(const ConvGeometry& g, const T* grad_y, const T* x, T* grad_w, T* grad_b_or_null) {
  std::fill(grad_w, grad_w + g.K * (g.C / g.groups) * g.R * g.S, T(0));
  for_each_product(g, [&](std::int64_t yi, std::int64_t xi, std::int64_t wi) { grad_w[wi] += grad_y[yi] * x[xi]; });
  if (!grad_b_or_null) return;
  for (std::int64_t k = 0; k < g.K; ++k) {
    T sum = 0;
    for (std::int64_t n = 0; n < g.N; ++n)
      for (std::int64_t i = 0; i < g.P * g.Q; ++i) sum += grad_y[(n * g.K + k) * g.P * g.Q + i];
    grad_b_or_null[k] = sum;
  }
}

template void conv_forward(const ConvGeometry&, const float*, const float*, const float*, float*);
template void conv_forward(const ConvGeometry&, const double*, const double*, const double*, double*);
template void conv_backward_data(const ConvGeometry&, const float*, const float*, float*);
template void conv_backward_data(const ConvGeometry&, const double*, const double*, double*);
template void conv_backward_weight(const ConvGeometry&, const float*, const float*, float*, float*);
template void conv_backward_weight(const ConvGeometry&, const double*, const double*, double*, double*);

}  // namespace juanji::cpu::ref
