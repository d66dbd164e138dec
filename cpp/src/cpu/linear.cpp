// Fully connected layer (the seeds' BP network) through the packed GEMM:
//   y = x w^T + b,  dx = dy w,  dw = dy^T x,  db = column sums of dy.
#include "cpu/gemm.hpp"
#include "cpu/op_support.hpp"
#include "juanji/ops/dense.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/ops.hpp"
#endif

namespace juanji {
namespace {

template <class T>
void forward_impl(std::int64_t N, std::int64_t in, std::int64_t out, const T* x, const T* w,
                  const T* b, T* y) {
  // x (N, in), w (out, in), b (out) or null, y (N, out)
  if (b)
    for (std::int64_t n = 0; n < N; ++n) std::copy(b, b + out, y + n * out);
  cpu::gemm<T>(N, out, in, {x, in, 1}, {w, 1, in}, y, out, b != nullptr, true);
}

template <class T>
void backward_impl(std::int64_t N, std::int64_t in, std::int64_t out, const T* dy, const T* x,
                   const T* w, T* dx, T* dw, T* db) {
  // dy (N, out); dx (N, in), dw (out, in), db (out): each may be null (not wanted)
  if (dx) cpu::gemm<T>(N, in, out, {dy, out, 1}, {w, in, 1}, dx, in, false, true);
  if (dw) cpu::gemm<T>(out, in, N, {dy, 1, out}, {x, in, 1}, dw, in, false, true);
  if (db) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * out > 100000)
    for (std::int64_t o = 0; o < out; ++o) {
      double sum = 0;
      for (std::int64_t n = 0; n < N; ++n) sum += dy[n * out + o];
      db[o] = static_cast<T>(sum);
    }
  }
}

void check_linear(const Tensor& x, const Tensor& w) {
  check_float(x, "x");
  check_float(w, "weight");
  check_same_dtype(x, "x", w, "weight");
  check_same_device(x, "x", w, "weight");
  cpu::require_supported_device(x, "linear", "x");
  check_dim(x, "x", 2, "(N, in_features)");
  check_dim(w, "weight", 2, "(out_features, in_features)");
  check(x.size(1) == w.size(1), "weight: ", shape_text(w.shape()), " expects in_features = ",
        w.size(1), " but x ", shape_text(x.shape()), " has ", x.size(1));
#if JUANJI_WITH_CUDA
  check(x.device().is_cpu() || (x.numel() > 0 && w.numel() > 0), "linear: empty operands x ",
        shape_text(x.shape()), ", weight ", shape_text(w.shape()), " are not supported on CUDA yet");
#endif
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::linear_forward(x, w, b, y);
#endif
  const std::int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  if (x.dtype() == DType::float32)
    forward_impl<float>(N, in, out, x.data<float>(), w.data<float>(), cpu::data_or_null<float>(b), y.data<float>());
  else
    forward_impl<double>(N, in, out, x.data<double>(), w.data<double>(), cpu::data_or_null<double>(b),
                         y.data<double>());
}

bool linear_forward_activation(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y,
                               Activation kind, double negative_slope) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::linear_forward(x, w, b, y, {true, kind, negative_slope});
    return true;
  }
#endif
  (void)x, (void)w, (void)b, (void)y, (void)kind, (void)negative_slope;
  return false;
}

void linear_backward_into(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                          Tensor& grad_w, Tensor& grad_b) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::linear_backward(grad_y, x, w, grad_x, grad_w, grad_b);
#endif
  const std::int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  if (x.dtype() == DType::float32)
    backward_impl<float>(N, in, out, grad_y.data<float>(), x.data<float>(), w.data<float>(),
                         cpu::data_or_null<float>(grad_x), cpu::data_or_null<float>(grad_w), cpu::data_or_null<float>(grad_b));
  else
    backward_impl<double>(N, in, out, grad_y.data<double>(), x.data<double>(), w.data<double>(),
                          cpu::data_or_null<double>(grad_x), cpu::data_or_null<double>(grad_w),
                          cpu::data_or_null<double>(grad_b));
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_linear(x, w);
  if (b.defined()) {
    check_float(b, "bias");
    check_same_dtype(x, "x", b, "bias");
    check_same_device(x, "x", b, "bias");
    check(b.dim() == 1 && b.size(0) == w.size(0), "bias: expected shape (", w.size(0),
          ",) to match weight ", shape_text(w.shape()), ", got ", shape_text(b.shape()));
  }
  Tensor y = Tensor::empty({x.size(0), w.size(0)}, x.dtype(), x.device());
  linear_forward(x.contiguous(), w.contiguous(), b.defined() ? b.contiguous() : Tensor(), y);
  return y;
}

LinearGrads linear_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w) {
  check_linear(x, w);
  check_float(grad_out, "grad_out");
  check_same_dtype(grad_out, "grad_out", x, "x");
  check_same_device(grad_out, "grad_out", x, "x");
  const Shape expected{x.size(0), w.size(0)};
  check(grad_out.shape() == expected, "grad_out: expected shape ", shape_text(expected), " for x ",
        shape_text(x.shape()), " and weight ", shape_text(w.shape()), ", got ", shape_text(grad_out.shape()));
  LinearGrads grads{Tensor::empty(x.shape(), x.dtype(), x.device()),
                    Tensor::empty(w.shape(), w.dtype(), x.device()),
                    Tensor::empty({w.size(0)}, x.dtype(), x.device())};
  linear_backward_into(grad_out.contiguous(), x.contiguous(), w.contiguous(), grads.grad_x,
                       grads.grad_w, grads.grad_b);
  return grads;
}

}  // namespace juanji
