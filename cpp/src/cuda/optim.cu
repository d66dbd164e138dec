// The optimizers on CUDA: the fused SGD and Adam updates (one pass over a parameter each, with
// the CPU's formulas in cpu/optim.cpp), and the sum of squares and scaling of gradient clipping.
#include <vector>

#include "cuda/common.cuh"
#include "cuda/cuda_backend.hpp"
#include "cuda/ops.hpp"

namespace juanji::cuda {
namespace {

// d = g + wd*w; v = mu*v + d; d = nesterov ? d + mu*v : v; w -= lr*d (v null: no momentum).
template <class T>
__global__ void sgd_kernel(T* w, const T* g, T* v, index_t n, T lr, T mu, T wd, bool nesterov) {
  for (index_t i = global_thread(); i < n; i += global_stride()) {
    T d = g[i] + wd * w[i];
    if (v) {
      v[i] = mu * v[i] + d;
      d = nesterov ? d + mu * v[i] : v[i];
    }
    w[i] -= lr * d;
  }
}

// decay: AdamW's 1 - lr*wd (else 1); l2: Adam's wd (else 0).
template <class T>
__global__ void adam_kernel(T* w, const T* g, T* m, T* v, index_t n, T b1, T b2, T eps, T step_size, T bc2_sqrt,
                            T decay, T l2) {
  for (index_t i = global_thread(); i < n; i += global_stride()) {
    const T d = g[i] + l2 * w[i];
    m[i] = b1 * m[i] + (T(1) - b1) * d;
    v[i] = b2 * v[i] + (T(1) - b2) * d * d;
    w[i] = decay * w[i] - step_size * (m[i] / (sqrt(v[i]) / bc2_sqrt + eps));
  }
}

template <class T>
__global__ void sum_of_squares_kernel(const T* x, index_t n, double* partials) {
  __shared__ double buffer[kBlockThreads];
  double sum = 0;
  for (index_t i = global_thread(); i < n; i += global_stride()) sum += static_cast<double>(x[i]) * x[i];
  sum = block_sum<kBlockThreads>(sum, buffer);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

template <class T>
__global__ void scale_kernel(T* x, index_t n, T factor) {
  for (index_t i = global_thread(); i < n; i += global_stride()) x[i] *= factor;
}

void check_parameter_tensor(const Tensor& t, const Tensor& value, const char* name) {
  check_operand(t, "adam_update", name, value.device(), value.dtype(), value.numel());
}

}  // namespace

void adam_update(const AdamSlot& slot, const AdamSettings& settings) {
  const Tensor& w = slot.value;
  check_float(w, "weight");
  check_parameter_tensor(w, w, "weight");
  check_parameter_tensor(slot.grad, w, "grad");
  check_parameter_tensor(slot.exp_avg, w, "exp_avg");
  check_parameter_tensor(slot.exp_avg_sq, w, "exp_avg_sq");
  const index_t n = w.numel();
  if (n == 0) return;
  use_device_of(w);
  const AdamStepFactors f = adam_step_factors(settings, slot.step);
  with_float_type(w.dtype(), [&](auto tag) {
    using T = decltype(tag);
    adam_kernel<T><<<grid_for(n), kBlockThreads>>>(
        data_of<T>(w), data_of<T>(slot.grad), data_of<T>(slot.exp_avg), data_of<T>(slot.exp_avg_sq), n,
        static_cast<T>(settings.beta1), static_cast<T>(settings.beta2), static_cast<T>(settings.eps),
        static_cast<T>(f.step_size), static_cast<T>(f.bias_correction2_sqrt), static_cast<T>(f.decay),
        settings.decoupled_weight_decay ? T(0) : static_cast<T>(settings.weight_decay));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

double sum_of_squares(const Tensor& t) {
  check_float(t, "grad");
  const index_t n = t.numel();
  check_operand(t, "clip_grad_norm", "grad", t.device(), t.dtype(), n);
  if (n == 0) return 0;
  use_device_of(t);
  const unsigned blocks = grid_for(n);
  auto* partials = static_cast<double*>(scratch(t, Scratch::first, sizeof(double) * blocks));
  with_float_type(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    sum_of_squares_kernel<T><<<blocks, kBlockThreads>>>(data_of<T>(t), n, partials);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
  std::vector<double> host(blocks);
  copy_to_host(host.data(), partials, sizeof(double) * blocks, t.device().index);
  double sum = 0;
  for (double p : host) sum += p;
  return sum;
}

void scale(const Tensor& t, double factor) {
  check_float(t, "grad");
  const index_t n = t.numel();
  check_operand(t, "clip_grad_norm", "grad", t.device(), t.dtype(), n);
  if (n == 0) return;
  use_device_of(t);
  with_float_type(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<grid_for(n), kBlockThreads>>>(data_of<T>(t), n, static_cast<T>(factor));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void sgd_update(const Tensor& weight, const Tensor& grad, const Tensor& velocity, double lr,
                double momentum, bool nesterov, double weight_decay) {
  const char* op = "sgd_update";
  check_float(weight, "weight");
  const index_t n = weight.numel();
  check_operand(weight, op, "weight", weight.device(), weight.dtype(), n);
  check_operand(grad, op, "grad", weight.device(), weight.dtype(), n);
  if (velocity.defined()) check_operand(velocity, op, "velocity", weight.device(), weight.dtype(), n);
  if (n == 0) return;
  use_device_of(weight);
  with_float_type(weight.dtype(), [&](auto tag) {
    using T = decltype(tag);
    sgd_kernel<T><<<grid_for(n), kBlockThreads>>>(data_of<T>(weight), data_of<T>(grad),
                                                  optional_data_of<T>(velocity), n, static_cast<T>(lr),
                                                  static_cast<T>(momentum), static_cast<T>(weight_decay),
                                                  nesterov);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace juanji::cuda
