// Stand-in linear layer (plain loops, double accumulation) until the GEMM-based version replaces
// this file; same contract as juanji/ops/dense.hpp.
#include "cpu/op_support.hpp"
#include "juanji/ops/dense.hpp"

namespace juanji {
namespace {

void check_linear_args(const Tensor& x, const Tensor& w, const char* op) {
  cpu::check_float_cpu(x, op, "x");
  cpu::check_float_cpu(w, op, "w");
  check_dim(x, "x", 2, "(N, in)");
  check_dim(w, "w", 2, "(out, in)");
  check_same_dtype(x, "x", w, "w");
  check(x.size(1) == w.size(1), op, ": x ", shape_str(x.shape()), " has ", x.size(1),
        " features but w ", shape_str(w.shape()), " expects ", w.size(1));
}

}  // namespace

// x (N,in), w (out,in), b (out) or undefined -> y (N,out).
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  const std::int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  cpu::dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    const T* wd = w.data<T>();
    const T* bd = b.defined() ? b.data<T>() : nullptr;
    T* yd = y.data<T>();
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < out; ++o) {
        double s = bd ? bd[o] : 0.0;
        for (std::int64_t i = 0; i < in; ++i) s += static_cast<double>(xd[n * in + i]) * wd[o * in + i];
        yd[n * out + o] = static_cast<T>(s);
      }
  });
}

// grad_y (N,out), x (N,in), w (out,in) -> grad_x (N,in), grad_w (out,in), grad_b (out).
void linear_backward_into(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                          Tensor& grad_w, Tensor& grad_b) {
  const std::int64_t N = x.size(0), in = x.size(1), out = w.size(0);
  cpu::dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    const T* xd = x.data<T>();
    const T* wd = w.data<T>();
    if (grad_x.defined()) {
      T* gx = grad_x.data<T>();
#pragma omp parallel for schedule(static)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t i = 0; i < in; ++i) {
          double s = 0;
          for (std::int64_t o = 0; o < out; ++o) s += static_cast<double>(gy[n * out + o]) * wd[o * in + i];
          gx[n * in + i] = static_cast<T>(s);
        }
    }
    if (grad_w.defined()) {
      T* gw = grad_w.data<T>();
#pragma omp parallel for schedule(static)
      for (std::int64_t o = 0; o < out; ++o)
        for (std::int64_t i = 0; i < in; ++i) {
          double s = 0;
          for (std::int64_t n = 0; n < N; ++n) s += static_cast<double>(gy[n * out + o]) * xd[n * in + i];
          gw[o * in + i] = static_cast<T>(s);
        }
    }
    if (grad_b.defined()) {
      T* gb = grad_b.data<T>();
      for (std::int64_t o = 0; o < out; ++o) {
        double s = 0;
        for (std::int64_t n = 0; n < N; ++n) s += gy[n * out + o];
        gb[o] = static_cast<T>(s);
      }
    }
  });
}

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in) {
  check_linear_args(x_in, w_in, "linear");
  if (b_in.defined()) {
    cpu::check_float_cpu(b_in, "linear", "b");
    check_same_dtype(b_in, "b", w_in, "w");
    check(b_in.dim() == 1 && b_in.size(0) == w_in.size(0), "linear: b has shape ",
          shape_str(b_in.shape()), " but w ", shape_str(w_in.shape()), " needs (", w_in.size(0),
          ",)");
  }
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const Tensor b = b_in.defined() ? b_in.contiguous() : Tensor();
  Tensor y = Tensor::empty({x.size(0), w.size(0)}, x.dtype());
  linear_forward(x, w, b, y);
  return y;
}

LinearGrads linear_backward(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& w_in) {
  check_linear_args(x_in, w_in, "linear_backward");
  cpu::check_float_cpu(grad_out_in, "linear_backward", "grad_out");
  check_same_dtype(grad_out_in, "grad_out", x_in, "x");
  const Shape expected{x_in.size(0), w_in.size(0)};
  check(grad_out_in.shape() == expected, "linear_backward: grad_out has shape ",
        shape_str(grad_out_in.shape()), " but the output for x ", shape_str(x_in.shape()),
        " and w ", shape_str(w_in.shape()), " has shape ", shape_str(expected));
  const Tensor g = grad_out_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  LinearGrads grads{Tensor::empty(x.shape(), x.dtype()), Tensor::empty(w.shape(), x.dtype()),
                    Tensor::empty({w.size(0)}, x.dtype())};
  linear_backward_into(g, x, w, grads.grad_x, grads.grad_w, grads.grad_b);
  return grads;
}

}  // namespace juanji
