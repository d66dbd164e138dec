// CPU kernels of the losses. The operands are checked by ops/loss.cpp: contiguous CPU tensors,
// z and y of one float dtype and shape, logits (N, C) with C > 0, labels (N) in [0, C). The
// contracts of the CUDA kernels in cuda/ops.hpp, but for the labels: already read on the host.
#pragma once

#include <cstdint>

#include "juanji/ops/loss.hpp"
#include "juanji/tensor.hpp"

namespace juanji::cpu {

// out has z's shape for Reduction::none, else is 0-d.
void mse_loss(const Tensor& z, const Tensor& y, Reduction reduction, Tensor& out);
// grad = factor * (z - y)
void mse_loss_backward(const Tensor& z, const Tensor& y, double factor, Tensor& grad);
// label_smoothing eps in [0, 1] (checked); the target is (1 - eps) * onehot(labels) + eps / C.
// out is (N,) for Reduction::none, else 0-d (mean or sum; not half_sum).
void cross_entropy(const Tensor& logits, const std::int64_t* labels, Reduction reduction,
                   double label_smoothing, Tensor& out);
// grad = (softmax(logits) - target) * scale
void cross_entropy_backward(const Tensor& logits, const std::int64_t* labels, double scale,
                            double label_smoothing, Tensor& grad);
// The mean loss (returned), its gradient into grad_logits and, when correct is not null, the
// number of correct argmax predictions; N > 0.
double cross_entropy_mean_into(const Tensor& logits, const std::int64_t* labels,
                               double label_smoothing, Tensor& grad_logits, std::int64_t* correct);

}  // namespace juanji::cpu
