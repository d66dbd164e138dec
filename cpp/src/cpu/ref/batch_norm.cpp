#include <cmath>

#include "cpu/ref/reference.hpp"

namespace juanji::cpu::ref {

template <class T>
void batch_norm_forward(std::int64_t N, std::int64_t C, std::int64_t area, const T* x, const T* gamma_or_null,
                        const T* beta_or_null, T* running_mean, T* running_var, bool training, double momentum,
                        double eps, T* y, T* save_mean, T* save_invstd) {
  const T count = static_cast<T>(N * area);
  for (std::int64_t c = 0; c < C; ++c) {
    const auto at = [&](std::int64_t n, std::int64_t i) { return (n * C + c) * area + i; };
    T mean, invstd;
    if (training) {
      T sum = 0;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t i = 0; i < area; ++i) sum += x[at(n, i)];
      mean = sum / count;
      T squares = 0;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t i = 0; i < area; ++i) squares += (x[at(n, i)] - mean) * (x[at(n, i)] - mean);
      const T var = squares / count;
      invstd = T(1) / std::sqrt(var + static_cast<T>(eps));
      const T m = static_cast<T>(momentum);
      if (running_mean) running_mean[c] = (T(1) - m) * running_mean[c] + m * mean;
      if (running_var) running_var[c] = (T(1) - m) * running_var[c] + m * var * count / (count - T(1));
    } else {
      mean = running_mean[c];
      invstd = T(1) / std::sqrt(running_var[c] + static_cast<T>(eps));
    }
    if (save_mean) save_mean[c] = mean;
    if (save_invstd) save_invstd[c] = invstd;
    const T gamma = gamma_or_null ? gamma_or_null[c] : T(1), beta = beta_or_null ? beta_or_null[c] : T(0);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < area; ++i) y[at(n, i)] = (x[at(n, i)] - mean) * invstd * gamma + beta;
  }
}

template <class T>
void batch_norm_backward(std::int64_t N, std::int64_t C, std::int64_t area, const T* grad_y, const T* x,
                         const T* gamma_or_null, const T* save_mean, const T* save_invstd, T* grad_x,
                         T* grad_gamma, T* grad_beta) {
  const T count = static_cast<T>(N * area);
  for (std::int64_t c = 0; c < C; ++c) {
    const auto at = [&](std::int64_t n, std::int64_t i) { return (n * C + c) * area + i; };
    const T mean = save_mean[c], invstd = save_invstd[c];
    T sum_g = 0, sum_g_xhat = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < area; ++i) {
        sum_g += grad_y[at(n, i)];
        sum_g_xhat += grad_y[at(n, i)] * (x[at(n, i)] - mean) * invstd;
      }
    grad_beta[c] = sum_g;
    grad_gamma[c] = sum_g_xhat;
    const T gamma = gamma_or_null ? gamma_or_null[c] : T(1);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < area; ++i) {
        const T xhat = (x[at(n, i)] - mean) * invstd;
        grad_x[at(n, i)] = gamma * invstd * (grad_y[at(n, i)] - sum_g / count - xhat * sum_g_xhat / count);
      }
  }
}

template void batch_norm_forward(std::int64_t, std::int64_t, std::int64_t, const float*, const float*, const float*,
                                 float*, float*, bool, double, double, float*, float*, float*);
template void batch_norm_forward(std::int64_t, std::int64_t, std::int64_t, const double*, const double*,
                                 const double*, double*, double*, bool, double, double, double*, double*, double*);
template void batch_norm_backward(std::int64_t, std::int64_t, std::int64_t, const float*, const float*, const float*,
                                  const float*, const float*, float*, float*, float*);
template void batch_norm_backward(std::int64_t, std::int64_t, std::int64_t, const double*, const double*,
                                  const double*, const double*, const double*, double*, double*, double*);

}  // namespace juanji::cpu::ref
