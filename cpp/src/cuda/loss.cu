// Losses on CUDA with the CPU's formulas (cpu/loss.cpp): squared error and fused, stable softmax
// cross-entropy. Totals are summed in double in two fixed stages (per-block or per-row values,
// then one block's tree), so a loss is the same on every run.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.hpp"

namespace juanji::cuda {
namespace {

// Blocks of the first reduction stage: a function of n only (and few enough for one block to
// finish the sum).
unsigned reduction_blocks(index_t n) {
  constexpr index_t kMaxBlocks = 1024;
  const index_t blocks = ceil_div(n, kBlockThreads);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < kMaxBlocks ? blocks : kMaxBlocks));
}

template <class T>
__global__ void squared_error(const T* z, const T* y, T* out, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride()) {
    const T d = z[i] - y[i];
    out[i] = d * d;
  }
}

// partials[block] = sum of (z - y)^2 in double over the block's grid-stride share.
template <class T>
__global__ void squared_error_partials(const T* z, const T* y, index_t n, double* partials) {
  __shared__ double buffer[kBlockThreads];
  double sum = 0;
  for (index_t i = global_thread(); i < n; i += global_stride()) {
    const double d = static_cast<double>(z[i]) - static_cast<double>(y[i]);
    sum += d * d;
  }
  sum = block_sum<kBlockThreads>(sum, buffer);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

template <class T>
__global__ void scaled_difference(const T* z, const T* y, T factor, T* grad, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride()) grad[i] = (z[i] - y[i]) * factor;
}

// Where the per-row cross-entropy kernel writes; null pointers are skipped.
template <class T>
struct RowOutputs {
  T* grad;              // (N, C): (softmax - target) * scale
  T* loss;              // (N): loss per row in T (reduction none)
  double* loss_double;  // (N): loss per row for a later sum
  index_t* hits;        // (N): 1 correct argmax, 0 wrong, -1 label out of range
};

// One warp per row of logits: max, exponentials and their sum, the loss, optionally the gradient
// and the argmax. Each lane owns the columns lane, lane + 32, ... for every pass. The target is
// (1 - eps) * onehot(label) + eps / C with eps = label_smoothing.
template <class T>
__global__ void cross_entropy_rows(const T* x, const index_t* labels, index_t N, index_t C,
                                   double label_smoothing, double scale, RowOutputs<T> out) {
  constexpr int kWarps = kBlockThreads / 32;
  const int lane = threadIdx.x % 32;
  for (index_t row = static_cast<index_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < N;
       row += static_cast<index_t>(gridDim.x) * kWarps) {
    const T* xr = x + row * C;
    T lane_max = -INFINITY;
    for (index_t c = lane; c < C; c += 32) lane_max = xr[c] > lane_max ? xr[c] : lane_max;
    const T m = warp_max(lane_max);
    double sum = 0;
    for (index_t c = lane; c < C; c += 32) sum += static_cast<double>(exp_of(static_cast<T>(xr[c] - m)));
    sum = warp_sum(sum);
    const index_t label = labels[row];
    const bool valid = label >= 0 && label < C;
    if (out.grad) {
      T* g = out.grad + row * C;
      const T factor = static_cast<T>(scale / sum);
      const T step = static_cast<T>(scale * (1.0 - label_smoothing));
      // With eps = 0 the subtracted share is +0, which leaves every product bit for bit unchanged.
      const T share = static_cast<T>(scale * label_smoothing / static_cast<double>(C));
      for (index_t c = lane; c < C; c += 32) {
        T v = exp_of(static_cast<T>(xr[c] - m)) * factor - share;
        if (c == label) v -= step;
        g[c] = v;
      }
    }
    index_t first = C;  // first column holding the maximum
    for (index_t c = lane; c < C && first == C; c += 32)
      if (xr[c] == m) first = c;
    for (int offset = 16; offset > 0; offset /= 2) {
      const index_t other = __shfl_xor_sync(0xffffffffu, first, offset);
      first = other < first ? other : first;
    }
    // -sum target * log_softmax = nll + eps * (x[label] - mean(x)); the mean is taken relative
    // to the maximum for range.
    const double max = static_cast<double>(m);
    double shifted_sum = 0;
    if (label_smoothing != 0) {
      for (index_t c = lane; c < C; c += 32) shifted_sum += static_cast<double>(xr[c]) - max;
      shifted_sum = warp_sum(shifted_sum);
    }
    if (lane == 0) {
      double loss = valid ? (max - static_cast<double>(xr[label])) + log(sum) : 0.0;
      if (valid && label_smoothing != 0)
        loss += label_smoothing *
                ((static_cast<double>(xr[label]) - max) - shifted_sum / static_cast<double>(C));
      if (out.loss) out.loss[row] = static_cast<T>(loss);
      if (out.loss_double) out.loss_double[row] = loss;
      if (out.hits) out.hits[row] = valid ? (first < C ? first : 0) == label : -1;
    }
  }
}

// One block: total = scale * sum of values (fixed tree order). Writes the total to out_value when
// given, and {total, correct hits, first row with a bad label (count when none)} to results.
template <class T>
__global__ void finish_sum(const double* values, const index_t* hits, index_t count, double scale,
                           T* out_value, double* results) {
  __shared__ double sums[kBlockThreads];
  __shared__ index_t counts[kBlockThreads];
  double sum = 0;
  index_t correct = 0, first_bad = count;
  for (index_t i = threadIdx.x; i < count; i += kBlockThreads) {
    sum += values[i];
    if (hits) {
      correct += hits[i] > 0;
      if (hits[i] < 0 && i < first_bad) first_bad = i;
    }
  }
  sum = block_sum<kBlockThreads>(sum, sums) * scale;
  correct = block_sum<kBlockThreads>(correct, counts);
  first_bad = block_reduce<kBlockThreads>(first_bad, counts, Min{});
  if (threadIdx.x == 0) {
    if (out_value) *out_value = static_cast<T>(sum);
    if (results) {
      results[0] = sum;
      results[1] = static_cast<double>(correct);
      results[2] = static_cast<double>(first_bad);
    }
  }
}

void check_labels_operand(const Tensor& labels, const char* op, const Tensor& logits) {
  check_defined(labels, "labels");
  check_type(labels.dtype() == DType::int64, "labels: expected int64 class labels, got a ",
             dtype_name(labels.dtype()), " tensor of shape ", shape_text(labels.shape()));
  check(labels.dim() == 1 && labels.size(0) == logits.size(0), "labels: expected shape (",
        logits.size(0), ",), one label per row of logits, got shape ", shape_text(labels.shape()));
  check_operand(labels, op, "labels", logits.device(), DType::int64, logits.size(0));
}

void check_logits_operand(const Tensor& logits, const char* op) {
  check_float(logits, "logits");
  check(logits.dim() == 2, op, ": logits: expected (N, C), got ", shape_text(logits.shape()));
  check_operand(logits, op, "logits", logits.device(), logits.dtype(), logits.numel());
}

unsigned row_blocks(index_t rows) { return grid_for(rows * 32); }

}  // namespace

void mse_loss(const Tensor& z, const Tensor& y, Reduction reduction, Tensor& out) {
  const char* op = "mse_loss";
  check_float(z, "z");
  const index_t n = z.numel();
  check_operand(z, op, "z", z.device(), z.dtype(), n);
  check_operand(y, op, "y", z.device(), z.dtype(), n);
  check_operand(out, op, "out", z.device(), z.dtype(), reduction == Reduction::none ? n : 1);
  use_device_of(z);
  with_float_type(z.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (reduction == Reduction::none) {
      if (n == 0) return;
      squared_error<T><<<grid_for(n), kBlockThreads>>>(data_of<T>(z), data_of<T>(y), data_of<T>(out), n);
      JUANJI_CUDA_CHECK_LAUNCH();
      return;
    }
    const unsigned blocks = reduction_blocks(n);
    auto* partials = static_cast<double*>(scratch(z, Scratch::first, sizeof(double) * blocks));
    squared_error_partials<T><<<blocks, kBlockThreads>>>(data_of<T>(z), data_of<T>(y), n, partials);
    JUANJI_CUDA_CHECK_LAUNCH();
    double scale = 1.0;
    if (reduction == Reduction::mean) scale = 1.0 / static_cast<double>(n);
    if (reduction == Reduction::half_sum) scale = 0.5;
    finish_sum<T><<<1, kBlockThreads>>>(partials, nullptr, blocks, scale, data_of<T>(out), nullptr);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void mse_loss_backward(const Tensor& z, const Tensor& y, double factor, Tensor& grad) {
  const char* op = "mse_loss_backward";
  check_float(z, "z");
  const index_t n = z.numel();
  check_operand(z, op, "z", z.device(), z.dtype(), n);
  check_operand(y, op, "y", z.device(), z.dtype(), n);
  check_operand(grad, op, "grad", z.device(), z.dtype(), n);
  if (n == 0) return;
  use_device_of(z);
  with_float_type(z.dtype(), [&](auto tag) {
    using T = decltype(tag);
    scaled_difference<T><<<grid_for(n), kBlockThreads>>>(data_of<T>(z), data_of<T>(y),
                                                         static_cast<T>(factor), data_of<T>(grad), n);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void cross_entropy(const Tensor& logits, const Tensor& labels, Reduction reduction,
                   double label_smoothing, Tensor& out) {
  const char* op = "cross_entropy";
  check_logits_operand(logits, op);
  check_labels_operand(labels, op, logits);
  const index_t N = logits.size(0), C = logits.size(1);
  check_operand(out, op, "out", logits.device(), logits.dtype(), reduction == Reduction::none ? N : 1);
  use_device_of(logits);
  with_float_type(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    RowOutputs<T> rows{};
    if (reduction == Reduction::none)
      rows.loss = data_of<T>(out);
    else
      rows.loss_double = static_cast<double*>(scratch(logits, Scratch::first, sizeof(double) * N));
    cross_entropy_rows<T><<<row_blocks(N), kBlockThreads>>>(data_of<T>(logits), data_of<index_t>(labels),
                                                            N, C, label_smoothing, 0.0, rows);
    JUANJI_CUDA_CHECK_LAUNCH();
    if (reduction == Reduction::none) return;
    const double scale = reduction == Reduction::mean ? 1.0 / static_cast<double>(N) : 1.0;
    finish_sum<T><<<1, kBlockThreads>>>(rows.loss_double, nullptr, N, scale, data_of<T>(out), nullptr);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& labels, double scale,
                            double label_smoothing, Tensor& grad) {
  const char* op = "cross_entropy_backward";
  check_logits_operand(logits, op);
  check_labels_operand(labels, op, logits);
  const index_t N = logits.size(0), C = logits.size(1);
  check_operand(grad, op, "grad", logits.device(), logits.dtype(), N * C);
  use_device_of(logits);
  with_float_type(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    RowOutputs<T> rows{};
    rows.grad = data_of<T>(grad);
    cross_entropy_rows<T><<<row_blocks(N), kBlockThreads>>>(data_of<T>(logits), data_of<index_t>(labels),
                                                            N, C, label_smoothing, scale, rows);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

double cross_entropy_mean_into(const Tensor& logits, const Tensor& labels_in,
                               double label_smoothing, Tensor& grad_logits, std::int64_t* correct) {
  const char* op = "cross_entropy_mean_into";
  check_logits_operand(logits, op);
  const index_t N = logits.size(0), C = logits.size(1);
  check(N > 0 && C > 0, op, ": logits has no rows or no classes, shape ", shape_text(logits.shape()));
  check_defined(labels_in, "labels");
  const Tensor labels = labels_in.contiguous();
  check_labels_operand(labels, op, logits);
  check_operand(grad_logits, op, "grad_logits", logits.device(), logits.dtype(), N * C);
  use_device_of(logits);
  double results[3];
  with_float_type(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto* losses = static_cast<double*>(scratch(logits, Scratch::first, sizeof(double) * N));
    auto* hits = static_cast<index_t*>(scratch(logits, Scratch::second, sizeof(index_t) * N));
    auto* device_results = static_cast<double*>(scratch(logits, Scratch::third, sizeof(results)));
    const RowOutputs<T> rows{data_of<T>(grad_logits), nullptr, losses, hits};
    cross_entropy_rows<T><<<row_blocks(N), kBlockThreads>>>(data_of<T>(logits), data_of<index_t>(labels),
                                                            N, C, label_smoothing,
                                                            1.0 / static_cast<double>(N), rows);
    JUANJI_CUDA_CHECK_LAUNCH();
    finish_sum<T><<<1, kBlockThreads>>>(losses, hits, N, 1.0 / static_cast<double>(N), nullptr,
                                        device_results);
    JUANJI_CUDA_CHECK_LAUNCH();
    JUANJI_CUDA_CHECK(cudaMemcpy(results, device_results, sizeof(results), cudaMemcpyDeviceToHost));
  });
  const auto first_bad = static_cast<index_t>(results[2]);
  if (first_bad < N) {
    index_t label = 0;
    JUANJI_CUDA_CHECK(cudaMemcpy(&label, data_of<index_t>(labels) + first_bad, sizeof(label),
                                 cudaMemcpyDeviceToHost));
    throw std::invalid_argument(detail::concat("labels: label ", label, " at index ", first_bad,
                                               " is out of range [0, ", C, ")"));
  }
  if (correct) *correct = static_cast<std::int64_t>(results[1]);
  return results[0];
}

}  // namespace juanji::cuda
