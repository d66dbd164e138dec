// Losses: the arguments' checks and the choice of backend (cpu/loss.hpp or cuda/ops.hpp) for each
// op of juanji/ops/loss.hpp.
#include "juanji/ops/loss.hpp"

#include <cmath>

#include "cpu/loss.hpp"
#include "ops/backend.hpp"
#include "ops/checks.hpp"

namespace juanji {
namespace {

using ops::check_float_operand;

void check_mse_args(const Tensor& z, const Tensor& y, const char* op) {
  check_float_operand(z, op, "z");
  check_float_operand(y, op, "y");
  check_same_dtype(z, "z", y, "y");
  check_same_device(z, "z", y, "y");
  check(z.shape() == y.shape(), op, ": z has shape ", shape_text(z.shape()), " but y has shape ",
        shape_text(y.shape()));
}

void check_logits(const Tensor& logits, const char* op) {
  check_float_operand(logits, op, "logits");
  check_dim(logits, "logits", 2, "(N, C)");
  check(logits.size(1) > 0, op, ": logits has no classes, shape ", shape_text(logits.shape()));
}

void check_ce_reduction(Reduction reduction, const char* op) {
  check(reduction != Reduction::half_sum, op,
        ": reduction must be 'mean', 'sum' or 'none', got 'half_sum'");
}

// The checked, contiguous operands shared by cross_entropy and its backward.
struct CrossEntropyOperands {
  CrossEntropyOperands(const Tensor& logits_in, const Tensor& labels_in, Reduction reduction,
                       double label_smoothing, const char* op) {
    check_logits(logits_in, op);
    check_ce_reduction(reduction, op);
    check_label_smoothing(label_smoothing);
    N = logits_in.size(0);
    C = logits_in.size(1);
    check_labels(labels_in, N, C);
    check_same_device(logits_in, "logits", labels_in, "labels");
    logits = logits_in.contiguous();
    labels = labels_in.contiguous();
  }
  Tensor logits, labels;
  std::int64_t N, C;
};

}  // namespace

Reduction parse_reduction(const std::string& text, const char* op, bool half_sum_allowed) {
  if (text == "mean") return Reduction::mean;
  if (text == "sum") return Reduction::sum;
  if (text == "none") return Reduction::none;
  if (text == "half_sum" && half_sum_allowed) return Reduction::half_sum;
  throw std::invalid_argument(detail::concat(op, ": reduction must be 'mean', 'sum', ",
                                             half_sum_allowed ? "'half_sum' " : "", "or 'none', got '", text, "'"));
}

// z, y (any shape, equal) -> 0-d, or (z - y)^2 elementwise for none.
Tensor mse_loss(const Tensor& z_in, const Tensor& y_in, Reduction reduction) {
  const char* op = "mse_loss";
  check_mse_args(z_in, y_in, op);
  const Tensor z = z_in.contiguous();
  const Tensor y = y_in.contiguous();
  Tensor out = Tensor::empty(reduction == Reduction::none ? z.shape() : Shape{}, z.dtype(), z.device());
#if JUANJI_WITH_CUDA
  if (z.device().is_cuda()) {
    cuda::mse_loss(z, y, reduction, out);
    return out;
  }
#endif
  cpu::mse_loss(z, y, reduction, out);
  return out;
}

// d loss / d z (shape of z): half_sum z - y, sum and none 2(z - y), mean 2(z - y)/numel.
Tensor mse_loss_backward(const Tensor& z_in, const Tensor& y_in, Reduction reduction) {
  const char* op = "mse_loss_backward";
  check_mse_args(z_in, y_in, op);
  const Tensor z = z_in.contiguous();
  const Tensor y = y_in.contiguous();
  const std::int64_t n = z.numel();
  double factor = 2.0;
  if (reduction == Reduction::half_sum) factor = 1.0;
  if (reduction == Reduction::mean) factor = 2.0 / static_cast<double>(n);
  Tensor grad = Tensor::empty(z.shape(), z.dtype(), z.device());
#if JUANJI_WITH_CUDA
  if (z.device().is_cuda()) {
    cuda::mse_loss_backward(z, y, factor, grad);
    return grad;
  }
#endif
  cpu::mse_loss_backward(z, y, factor, grad);
  return grad;
}

// logits (N,C), labels (N) -> 0-d, or per-sample losses (N) for none.
Tensor cross_entropy(const Tensor& logits_in, const Tensor& labels_in, Reduction reduction,
                     double label_smoothing) {
  const CrossEntropyOperands operands(logits_in, labels_in, reduction, label_smoothing,
                                      "cross_entropy");
  const Tensor& logits = operands.logits;
  const std::int64_t N = operands.N;
  Tensor out = Tensor::empty(reduction == Reduction::none ? Shape{N} : Shape{}, logits.dtype(), logits.device());
#if JUANJI_WITH_CUDA
  if (logits.device().is_cuda()) {
    cuda::cross_entropy(logits, operands.labels, reduction, label_smoothing, out);
    return out;
  }
#endif
  cpu::cross_entropy(logits, operands.labels.data<std::int64_t>(), reduction, label_smoothing, out);
  return out;
}

// logits (N,C), labels (N) -> (N,C): softmax - target, divided by N for mean.
Tensor cross_entropy_backward(const Tensor& logits_in, const Tensor& labels_in,
                              Reduction reduction, double label_smoothing) {
  const CrossEntropyOperands operands(logits_in, labels_in, reduction, label_smoothing,
                                      "cross_entropy_backward");
  const Tensor& logits = operands.logits;
  const std::int64_t N = operands.N;
  const double scale = reduction == Reduction::mean ? 1.0 / static_cast<double>(N) : 1.0;
  Tensor grad = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
#if JUANJI_WITH_CUDA
  if (logits.device().is_cuda()) {
    cuda::cross_entropy_backward(logits, operands.labels, scale, label_smoothing, grad);
    return grad;
  }
#endif
  cpu::cross_entropy_backward(logits, operands.labels.data<std::int64_t>(), scale, label_smoothing,
                              grad);
  return grad;
}

// logits, grad_logits (N,C) contiguous; labels (N) int64.
double cross_entropy_mean_into(const Tensor& logits, const Tensor& labels_in, Tensor& grad_logits,
                               std::int64_t* correct, double label_smoothing) {
  const char* op = "cross_entropy_mean_into";
  check_logits(logits, op);
  check_label_smoothing(label_smoothing);
  const std::int64_t N = logits.size(0), C = logits.size(1);
  check(N > 0, op, ": logits has no rows, shape ", shape_text(logits.shape()));
#if JUANJI_WITH_CUDA
  if (logits.device().is_cuda())
    return cuda::cross_entropy_mean_into(logits, labels_in, label_smoothing, grad_logits, correct);
#endif
  check_labels(labels_in, N, C);
  ops::check_kernel_tensor(logits, op, "logits", logits.dtype(), N * C);
  ops::check_kernel_tensor(grad_logits, op, "grad_logits", logits.dtype(), N * C);
  const Tensor labels = labels_in.contiguous();
  return cpu::cross_entropy_mean_into(logits, labels.data<std::int64_t>(), label_smoothing,
                                      grad_logits, correct);
}

void check_label_smoothing(double label_smoothing) {
  check(std::isfinite(label_smoothing) && label_smoothing >= 0 && label_smoothing <= 1,
        "label_smoothing: must be a finite number in [0, 1], got ", label_smoothing);
}

void check_labels(const Tensor& labels_in, std::int64_t n, std::int64_t classes) {
  check_defined(labels_in, "labels");
  check_type(labels_in.dtype() == DType::int64, "labels: expected int64 class labels, got a ",
             dtype_name(labels_in.dtype()), " tensor of shape ", shape_text(labels_in.shape()));
  ops::require_supported_device(labels_in, "cross_entropy", "labels");
  check(labels_in.dim() == 1 && labels_in.size(0) == n, "labels: expected shape (", n,
        ",), one label per row of logits, got shape ", shape_text(labels_in.shape()));
  const Tensor labels = labels_in.to(Device{}).contiguous();
  const std::int64_t* lab = labels.data<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i)
    check(lab[i] >= 0 && lab[i] < classes, "labels: label ", lab[i], " at index ", i,
          " is out of range [0, ", classes, ")");
}

}  // namespace juanji
