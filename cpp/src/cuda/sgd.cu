// The fused SGD update on CUDA: weight decay, momentum / Nesterov and the step in one pass over a
// parameter, with optim::SGD::step's formulas (cpu side: optim/sgd.cpp).
#include "cuda/common.cuh"
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

}  // namespace

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
