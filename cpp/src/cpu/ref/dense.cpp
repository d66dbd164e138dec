#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/ref/reference.hpp"

namespace juanji::cpu::ref {

void activation_forward(Activation kind, double slope, const double* x, double* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    switch (kind) {
      case Activation::relu: y[i] = v < 0 ? 0.0 : v; break;
      case Activation::leaky_relu: y[i] = v > 0 ? v : slope * v; break;
      case Activation::sigmoid: y[i] = 1.0 / (1.0 + std::exp(-v)); break;
      case Activation::tanh: y[i] = std::tanh(v); break;
    }
  }
}

void activation_backward(Activation kind, double slope, const double* grad_y, const double* x, double* grad_x,
                         std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = x[i], g = grad_y[i];
    switch (kind) {
      case Activation::relu: grad_x[i] = v > 0 ? g : 0.0; break;
      case Activation::leaky_relu: grad_x[i] = v > 0 ? g : slope * g; break;
      case Activation::sigmoid: {
        const double s = 1.0 / (1.0 + std::exp(-v));
        grad_x[i] = s * (1.0 - s) * g;
        break;
      }
      case Activation::tanh: grad_x[i] = (1.0 - std::tanh(v) * std::tanh(v)) * g; break;
    }
  }
}

namespace {

// Calls line(at) for each of the outer * inner lines along the middle dim, at(d) its element d.
template <class Line>
void for_each_line(std::int64_t outer, std::int64_t D, std::int64_t inner, Line line) {
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t j = 0; j < inner; ++j) line([=](std::int64_t d) { return (o * D + d) * inner + j; });
}

}  // namespace

void softmax_forward(bool log, std::int64_t outer, std::int64_t D, std::int64_t inner, const double* x, double* y) {
  for_each_line(outer, D, inner, [&](auto at) {
    double max = x[at(0)];
    for (std::int64_t d = 1; d < D; ++d) max = std::max(max, x[at(d)]);
    double sum = 0;
    for (std::int64_t d = 0; d < D; ++d) sum += std::exp(x[at(d)] - max);
    for (std::int64_t d = 0; d < D; ++d)
      y[at(d)] = log ? x[at(d)] - max - std::log(sum) : std::exp(x[at(d)] - max) / sum;
  });
}

void softmax_backward(bool log, std::int64_t outer, std::int64_t D, std::int64_t inner, const double* grad_y,
                      const double* x, double* grad_x) {
  for_each_line(outer, D, inner, [&](auto at) {
    double max = x[at(0)];
    for (std::int64_t d = 1; d < D; ++d) max = std::max(max, x[at(d)]);
    double sum = 0;
    for (std::int64_t d = 0; d < D; ++d) sum += std::exp(x[at(d)] - max);
    double dot = 0;  // sum grad_y * softmax, or sum grad_y
    for (std::int64_t d = 0; d < D; ++d) dot += log ? grad_y[at(d)] : grad_y[at(d)] * std::exp(x[at(d)] - max) / sum;
    for (std::int64_t d = 0; d < D; ++d) {
      const double p = std::exp(x[at(d)] - max) / sum;
      grad_x[at(d)] = log ? grad_y[at(d)] - p * dot : p * (grad_y[at(d)] - dot);
    }
  });
}

void cross_entropy(std::int64_t N, std::int64_t C, const double* logits, const std::int64_t* labels,
                   double label_smoothing, double* loss, double* grad) {
  std::vector<double> log_p(C);
  for (std::int64_t n = 0; n < N; ++n) {
    softmax_forward(true, 1, C, 1, logits + n * C, log_p.data());
    loss[n] = 0;
    for (std::int64_t c = 0; c < C; ++c) {
      const double q = (c == labels[n] ? 1.0 - label_smoothing : 0.0) + label_smoothing / static_cast<double>(C);
      loss[n] -= q * log_p[c];
      grad[n * C + c] = std::exp(log_p[c]) - q;
    }
  }
}

void sgd_update(std::int64_t n, double* w, const double* g, double* velocity_or_null, const SgdSettings& s) {
  for (std::int64_t i = 0; i < n; ++i) {
    double d = g[i] + s.weight_decay * w[i];
    if (velocity_or_null) {
      double& v = velocity_or_null[i];
      v = s.momentum * v + d;
      d = s.nesterov ? d + s.momentum * v : v;
    }
    w[i] -= s.lr * d;
  }
}

void adam_update(std::int64_t n, double* w, const double* g, double* m, double* v, const AdamSettings& s,
                 std::int64_t step) {
  const double t = static_cast<double>(step);
  const double correction1 = 1 - std::pow(s.beta1, t), correction2 = 1 - std::pow(s.beta2, t);
  for (std::int64_t i = 0; i < n; ++i) {
    if (s.decoupled_weight_decay) w[i] -= s.lr * s.weight_decay * w[i];
    const double d = g[i] + (s.decoupled_weight_decay ? 0.0 : s.weight_decay * w[i]);
    m[i] = s.beta1 * m[i] + (1 - s.beta1) * d;
    v[i] = s.beta2 * v[i] + (1 - s.beta2) * d * d;
    const double m_hat = m[i] / correction1, v_hat = v[i] / correction2;
    w[i] -= s.lr * m_hat / (std::sqrt(v_hat) + s.eps);
  }
}

}  // namespace juanji::cpu::ref
