// Losses: squared error (the seeds' E = 1/2 sum (z - y)^2 and its mean/sum forms) and softmax
// cross-entropy on integer labels, fused and numerically stable.
#pragma once

#include <string>

#include "juanji/tensor.hpp"

namespace juanji {

enum class Reduction { none, mean, sum, half_sum };
// "mean", "sum", "none" and, where the op has it (MSE), "half_sum"; the error lists only the
// reductions the op takes.
Reduction parse_reduction(const std::string& text, const char* op, bool half_sum_allowed = true);

// "none" returns the element-wise loss; the others a 0-d tensor.
Tensor mse_loss(const Tensor& z, const Tensor& y, Reduction reduction);
// d loss / d z; for "none" every element's loss is weighted 1.
Tensor mse_loss_backward(const Tensor& z, const Tensor& y, Reduction reduction);

// logits (N, C), labels int64 (N,) in [0, C). half_sum is not accepted. label_smoothing eps in
// [0, 1] is PyTorch's: the target distribution is (1 - eps) * onehot + eps / C, the loss
// -sum target * log_softmax(logits) and its gradient softmax(logits) - target.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction reduction,
                     double label_smoothing = 0.0);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& labels, Reduction reduction,
                              double label_smoothing = 0.0);
// Fused kernel for training: writes d(mean loss)/d logits into grad_logits, returns the mean loss,
// and counts correct argmax predictions into *correct when it is not null.
double cross_entropy_mean_into(const Tensor& logits, const Tensor& labels, Tensor& grad_logits,
                               std::int64_t* correct, double label_smoothing = 0.0);
// Throws std::invalid_argument naming label_smoothing unless it is finite and in [0, 1].
void check_label_smoothing(double label_smoothing);

void check_labels(const Tensor& labels, std::int64_t n, std::int64_t classes);

}  // namespace juanji
