// CPU activations, softmax / log-softmax, dropout and batch normalization (linear layers live
// with the GEMM). Element-wise ops pick the activation once, outside the loop, so each loop body is
// a straight inline expression the compiler can vectorise. Reductions (softmax rows, batch-norm
// channels) are owned by one thread each and summed in double in a fixed order, so results do not
// depend on the thread count.
#include "cpu/dense.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"
#include "cpu/pool.hpp"
#include "cpu/vec_math.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu {
namespace {

// out[i] = f(i) for i in [0, n).
template <class T, class F>
void for_each_index(std::int64_t n, T* out, const F& f) {
#pragma omp parallel num_threads(::juanji::team_size()) if (n >= kParallelGrain)
  {
    // A per-thread copy: the shared functor's captures could alias `out` as far as the compiler
    // knows, which stops it from vectorising (leaky ReLU ran 25x slower).
    const F local = f;
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) out[i] = local(i);
  }
}

// float32 uses the vectorisable versions; float64 keeps libm's accuracy.
inline float exp_of(float v) { return exp_f32(v); }
inline double exp_of(double v) { return std::exp(v); }
inline float tanh_of(float v) { return tanh_f32(v); }
inline double tanh_of(double v) { return std::tanh(v); }
inline float sigmoid_of(float v) { return sigmoid_f32(v); }
inline double sigmoid_of(double v) {  // never overflows: exp of a non-positive number only
  const double e = std::exp(-std::abs(v));
  return v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

// y = f(x), elementwise; x, y (n). NaN inputs give NaN outputs.
template <class T>
void activation_kernel(Activation kind, T slope, const T* x, T* y, std::int64_t n) {
  switch (kind) {
    case Activation::relu:
      for_each_index(n, y, [x](std::int64_t i) {
        const T v = x[i];
        return v < T(0) ? T(0) : v;
      });
      break;
    case Activation::leaky_relu:
      for_each_index(n, y, [x, slope](std::int64_t i) {
        const T v = x[i];
        return v > T(0) ? v : v * slope;
      });
      break;
    case Activation::sigmoid:
      for_each_index(n, y, [x](std::int64_t i) { return sigmoid_of(x[i]); });
      break;
    case Activation::tanh:
      for_each_index(n, y, [x](std::int64_t i) { return tanh_of(x[i]); });
      break;
  }
}

// grad_x = f'(x) * grad_y; relu/leaky read x, sigmoid/tanh read the forward output y (or
// recompute it from x when y is null). All (n); grad_x may alias grad_y.
template <class T>
void activation_backward_kernel(Activation kind, T slope, const T* gy, const T* x, const T* y,
                                T* gx, std::int64_t n) {
  switch (kind) {
    case Activation::relu:
      // Load gy unconditionally: a load under the condition cannot be vectorised, and the
      // branches it leaves mispredict on half of random data (25x slower).
      for_each_index(n, gx, [gy, x](std::int64_t i) {
        const T g = gy[i];
        return x[i] > T(0) ? g : T(0);
      });
      break;
    case Activation::leaky_relu:
      for_each_index(n, gx, [gy, x, slope](std::int64_t i) {
        const T g = gy[i];
        return x[i] > T(0) ? g : g * slope;
      });
      break;
    case Activation::sigmoid:
      if (y)
        for_each_index(n, gx, [gy, y](std::int64_t i) { return gy[i] * y[i] * (T(1) - y[i]); });
      else
        for_each_index(n, gx, [gy, x](std::int64_t i) {
          const T s = sigmoid_of(x[i]);
          return gy[i] * s * (T(1) - s);
        });
      break;
    case Activation::tanh:
      if (y)
        for_each_index(n, gx, [gy, y](std::int64_t i) { return gy[i] * (T(1) - y[i] * y[i]); });
      else
        for_each_index(n, gx, [gy, x](std::int64_t i) {
          const T t = tanh_of(x[i]);
          return gy[i] * (T(1) - t * t);
        });
      break;
  }
}

constexpr std::int64_t kLaneBlock = 64;  // columns handled together when the reduced dim is strided

// The four softmax-family computations, applied to one block of `lanes` columns whose D values
// sit `stride` apart (stride 1, lanes 1 for a contiguous row). x, g, out point at element d = 0.
enum class SoftmaxOp { softmax, log_softmax, softmax_backward, log_softmax_backward };

template <class T, SoftmaxOp Op>
void softmax_block(const T* x, const T* g, T* out, std::int64_t D, std::int64_t stride,
                   std::int64_t lanes) {
  double max_buf[kLaneBlock], sum_buf[kLaneBlock], dot_buf[kLaneBlock];
  for (std::int64_t j = 0; j < lanes; ++j) {
    max_buf[j] = x[j];
    sum_buf[j] = 0;
    dot_buf[j] = 0;
  }
  for (std::int64_t d = 1; d < D; ++d) {
    const T* xd = x + d * stride;
    for (std::int64_t j = 0; j < lanes; ++j) max_buf[j] = xd[j] > max_buf[j] ? xd[j] : max_buf[j];
  }
  // out holds exp(x - max) after this pass; the backward ops also need sum(g) or sum(g * e).
  for (std::int64_t d = 0; d < D; ++d) {
    const T* xd = x + d * stride;
    T* od = out + d * stride;
    for (std::int64_t j = 0; j < lanes; ++j) {
      const T e = exp_of(static_cast<T>(xd[j] - static_cast<T>(max_buf[j])));
      sum_buf[j] += e;
      od[j] = e;
      if constexpr (Op == SoftmaxOp::softmax_backward)
        dot_buf[j] += static_cast<double>(g[d * stride + j]) * e;
      else if constexpr (Op == SoftmaxOp::log_softmax_backward)
        dot_buf[j] += g[d * stride + j];
    }
  }
  for (std::int64_t d = 0; d < D; ++d) {
    const T* xd = x + d * stride;
    T* od = out + d * stride;
    for (std::int64_t j = 0; j < lanes; ++j) {
      const double sum = sum_buf[j];
      if constexpr (Op == SoftmaxOp::softmax) {
        od[j] = static_cast<T>(od[j] / sum);
      } else if constexpr (Op == SoftmaxOp::log_softmax) {
        od[j] = static_cast<T>(xd[j] - max_buf[j] - std::log(sum));
      } else if constexpr (Op == SoftmaxOp::softmax_backward) {
        // s * (g - sum(g * s)) with s = e / sum
        const double s = od[j] / sum;
        od[j] = static_cast<T>(s * (g[d * stride + j] - dot_buf[j] / sum));
      } else {
        // g - s * sum(g)
        od[j] = static_cast<T>(g[d * stride + j] - od[j] / sum * dot_buf[j]);
      }
    }
  }
}

// The same computations on one contiguous row x, g, out (D): elementwise loops and lane-split
// reductions that vectorise.
template <class T, SoftmaxOp Op>
void softmax_row(const T* x, const T* g, T* out, std::int64_t D) {
  const T m = max_lanes(x, D);
  for (std::int64_t d = 0; d < D; ++d) out[d] = exp_of(static_cast<T>(x[d] - m));
  const double sum = sum_lanes(D, [out](std::int64_t d) { return double(out[d]); });
  double dot = 0;
  if constexpr (Op == SoftmaxOp::softmax_backward)
    dot = sum_lanes(D, [g, out](std::int64_t d) { return double(g[d]) * double(out[d]); });
  if constexpr (Op == SoftmaxOp::log_softmax_backward)
    dot = sum_lanes(D, [g](std::int64_t d) { return double(g[d]); });
  if constexpr (Op == SoftmaxOp::softmax) {
    const T inv = static_cast<T>(1.0 / sum);
    for (std::int64_t d = 0; d < D; ++d) out[d] *= inv;
  } else if constexpr (Op == SoftmaxOp::log_softmax) {
    const T lse = static_cast<T>(std::log(sum));  // x - m is exact near the maximum
    for (std::int64_t d = 0; d < D; ++d) out[d] = (x[d] - m) - lse;
  } else if constexpr (Op == SoftmaxOp::softmax_backward) {
    const T inv = static_cast<T>(1.0 / sum);
    const T mean = static_cast<T>(dot / sum);
    for (std::int64_t d = 0; d < D; ++d) out[d] = out[d] * inv * (g[d] - mean);
  } else {
    const T inv = static_cast<T>(1.0 / sum);
    const T total = static_cast<T>(dot);
    for (std::int64_t d = 0; d < D; ++d) out[d] = g[d] - out[d] * inv * total;
  }
}

// x, g, out (outer, D, inner); g may be null for the forward ops.
template <class T, SoftmaxOp Op>
void softmax_kernel(const T* x, const T* g, T* out, const SoftmaxLines& l) {
  if (l.D == 0) return;
  if (l.inner == 1) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (l.outer * l.D >= kParallelGrain)
    for (std::int64_t o = 0; o < l.outer; ++o)
      softmax_row<T, Op>(x + o * l.D, g ? g + o * l.D : nullptr, out + o * l.D, l.D);
    return;
  }
  const std::int64_t blocks = (l.inner + kLaneBlock - 1) / kLaneBlock;
  const std::int64_t tasks = l.outer * blocks;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (l.outer * l.D * l.inner >= kParallelGrain)
  for (std::int64_t t = 0; t < tasks; ++t) {
    const std::int64_t o = t / blocks;
    const std::int64_t j0 = (t % blocks) * kLaneBlock;
    const std::int64_t lanes = std::min(kLaneBlock, l.inner - j0);
    const std::int64_t base = o * l.D * l.inner + j0;
    softmax_block<T, Op>(x + base, g ? g + base : nullptr, out + base, l.D, l.inner, lanes);
  }
}

// Counter-based uniform draw in [0, 1): the value for element i depends only on (seed, i), so
// dropout masks do not depend on the thread count.
inline double uniform_at(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// A batch norm's channels a block at a time: each block's planes are read image after image, in
// memory order (a channel's plane alone is a short run, as short as one cache line, one page from
// the next), and stay in L2 for the passes after the first. Blocks of about kBlockBytes, given
// channel_bytes, a channel's bytes in the tensors a pass reads or writes; as many for each thread,
// their sizes differing by one channel at most (32 channels in 11 blocks of 3 left one thread 18 of
// them, the other 14). The blocks change no sum: each channel's still adds its planes in order.
class ChannelBlocks {
 public:
  ChannelBlocks(std::int64_t channels, std::int64_t channel_bytes) : channels_(channels) {
    constexpr std::int64_t kBlockBytes = 512 * 1024;
    const std::int64_t threads = ::juanji::team_size();
    const std::int64_t rounds =
        std::max<std::int64_t>(1, (channels * channel_bytes + threads * kBlockBytes - 1) / (threads * kBlockBytes));
    count_ = std::max<std::int64_t>(1, std::min(channels, threads * rounds));
  }
  std::int64_t count() const { return count_; }
  std::int64_t begin(std::int64_t block) const { return channels_ * block / count_; }
  std::int64_t end(std::int64_t block) const { return begin(block + 1); }

 private:
  std::int64_t channels_, count_;
};

// A checked batch-norm forward's operands, as each channel's work needs them.
template <class T>
struct NormForward {
  const T* x;
  const T *gamma, *beta;
  T *running_mean, *running_var, *save_mean, *save_invstd;
  std::int64_t N, C, area;
  bool training;
  double momentum, eps;
  // Each channel's kSumTerms partial sums (scratch made here, outside the parallel regions), and
  // in training its mean and variance: the whole batch's where share_statistics made them (then
  // shared_count is the batch's size), else block_affine's of this shard.
  std::vector<double> partials, means, vars;
  double shared_count = 0;

  NormForward(const Tensor& x_, const Tensor& gamma_, const Tensor& beta_, Tensor& running_mean_,
              Tensor& running_var_, bool training_, double momentum_, double eps_,
              Tensor& save_mean_, Tensor& save_invstd_)
      : x(x_.data<T>()),
        gamma(data_or_null<T>(gamma_)),
        beta(data_or_null<T>(beta_)),
        running_mean(data_or_null<T>(running_mean_)),
        running_var(data_or_null<T>(running_var_)),
        save_mean(data_or_null<T>(save_mean_)),
        save_invstd(data_or_null<T>(save_invstd_)),
        N(x_.size(0)),
        C(x_.size(1)),
        area(x_.size(2) * x_.size(3)),
        training(training_),
        momentum(momentum_),
        eps(eps_),
        partials(C * kSumTerms),
        means(C),
        vars(C) {}

  const T* plane(std::int64_t n, std::int64_t c) const { return x + (n * C + c) * area; }
  ChannelPlanesOf<T> planes(std::int64_t c0, std::int64_t c1) const { return {plane(0, c0), C * area, area, N, c1 - c0, area}; }
  // x and y.
  ChannelBlocks blocks() const { return {C, 2 * N * area * std::int64_t{sizeof(T)}}; }

  // Channels [c0, c1)'s sums of x into sums[0, c1 - c0), then (centers given) of (x - center)^2.
  void block_sums(std::int64_t c0, std::int64_t c1, const double* centers, double* sums) {
    double* own = &partials[c0 * kSumTerms];
    std::fill(own, own + (c1 - c0) * kSumTerms, 0.0);
    if (centers) squared_deviation_into_partials(planes(c0, c1), centers, own);
    else sum_into_partials(planes(c0, c1), own);
    for (std::int64_t k = 0; k < c1 - c0; ++k) sums[k] = combine_partial_sums(own + k * kSumTerms);
  }

  // With the batch split over processes (shard_sum set, training): every channel's mean and
  // variance over the whole batch, in two passes as block_affine makes them, summed across the
  // shards between the passes.
  void share_statistics(const ShardSum& shard_sum) {
    if (!training || !shard_sum) return;
    std::vector<double> sums(C + 1);
    const ChannelBlocks b = blocks();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * C * area >= kParallelGrain)
    for (std::int64_t block = 0; block < b.count(); ++block)
      block_sums(b.begin(block), b.end(block), nullptr, &sums[b.begin(block)]);
    sums[C] = static_cast<double>(N * area);
    shard_sum(sums.data(), C + 1);
    shared_count = sums[C];
    check(shared_count > 1, "batch_norm2d: training needs more than one value per channel over the "
          "whole batch, got ", shared_count, " across the shards");
    for (std::int64_t c = 0; c < C; ++c) means[c] = sums[c] / shared_count;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * C * area >= kParallelGrain)
    for (std::int64_t block = 0; block < b.count(); ++block)
      block_sums(b.begin(block), b.end(block), &means[b.begin(block)], &vars[b.begin(block)]);
    shard_sum(vars.data(), C);
    for (double& v : vars) v /= shared_count;
  }

  // Channels [c0, c1)'s means and inverse deviations (the batch's in training, which also updates
  // the running statistics; the running ones otherwise), saved for backward; scale[k] and shift[k]
  // take channel c0 + k's y = x * scale + shift.
  void block_affine(std::int64_t c0, std::int64_t c1, T* scale, T* shift) {
    const double values = shared_count > 0 ? shared_count : static_cast<double>(N * area);
    if (training && shared_count == 0) {
      block_sums(c0, c1, nullptr, &means[c0]);
      for (std::int64_t c = c0; c < c1; ++c) means[c] /= values;
      // A second pass about the mean: no cancellation.
      block_sums(c0, c1, &means[c0], &vars[c0]);
      for (std::int64_t c = c0; c < c1; ++c) vars[c] /= values;
    }
    for (std::int64_t k = 0; k < c1 - c0; ++k) {
      const std::int64_t c = c0 + k;
      double mean, invstd;
      if (training) {
        mean = means[c];
        const double var = vars[c];
        invstd = 1.0 / std::sqrt(var + eps);
        if (running_mean)
          running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * mean);
        if (running_var)
          running_var[c] =
              static_cast<T>((1 - momentum) * running_var[c] + momentum * var * values / (values - 1));
      } else {
        mean = running_mean[c];
        invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps);
      }
      if (save_mean) save_mean[c] = static_cast<T>(mean);
      if (save_invstd) save_invstd[c] = static_cast<T>(invstd);
      const double channel_scale = (gamma ? gamma[c] : 1.0) * invstd;
      scale[k] = static_cast<T>(channel_scale);
      shift[k] = static_cast<T>((beta ? beta[c] : 0.0) - mean * channel_scale);
    }
  }

  // Channel c's alone.
  std::pair<T, T> channel(std::int64_t c) {
    T scale, shift;
    block_affine(c, c + 1, &scale, &shift);
    return {scale, shift};
  }
};

template <class T>
void normalize_plane(const T* x, T* y, std::int64_t area, T scale, T shift, bool relu) {
  if (relu) {
    for (std::int64_t i = 0; i < area; ++i) {
      const T v = x[i] * scale + shift;
      y[i] = v < T(0) ? T(0) : v;
    }
  } else {
    for (std::int64_t i = 0; i < area; ++i) y[i] = x[i] * scale + shift;
  }
}

// normalize_plane over a grid of planes (scale[k] and shift[k] channel k's), each output plane
// at its input plane's offset from out; float32 through the active SIMD kernel (same bits).
template <class T>
void normalize_planes(const ChannelPlanesOf<T>& x, T* out, const T* scale, const T* shift, bool relu) {
  if constexpr (std::is_same_v<T, float>) {
    active_kernels().normalize_planes_f32({x, out, scale, shift, relu});
  } else {
    for (std::int64_t image = 0; image < x.images; ++image)
      for (std::int64_t k = 0; k < x.channels; ++k)
        normalize_plane(x.plane(image, k), out + (x.plane(image, k) - x.first), x.n, scale[k], shift[k], relu);
  }
}

// grad_x = (a[k] * g + b[k] * x) + shift[k] over a grid of planes, as normalize_planes.
template <class T>
void norm_grad_planes(const ChannelPlanesOf<T>& g, const ChannelPlanesOf<T>& x, T* out, const T* a, const T* b,
                      const T* shift) {
  if constexpr (std::is_same_v<T, float>) {
    active_kernels().norm_grad_planes_f32({g, x, out, a, b, shift});
  } else {
    for (std::int64_t image = 0; image < x.images; ++image)
      for (std::int64_t k = 0; k < x.channels; ++k) {
        const T* gp = g.plane(image, k);
        const T* xp = x.plane(image, k);
        T* yp = out + (xp - x.first);
        for (std::int64_t i = 0; i < x.n; ++i) yp[i] = a[k] * gp[i] + b[k] * xp[i] + shift[k];
      }
  }
}

// A checked batch-norm backward's operands, as each block of channels' work needs them.
template <class T>
struct NormBackward {
  const T* x;
  const T *gamma, *save_mean, *save_invstd;
  T *grad_x, *grad_gamma, *grad_beta, *grad_x_sums;
  std::int64_t N, C, area;
  // With the batch split over processes (share_sums): each channel's sums of g and of
  // g * (x - mean), this shard's ([2c], [2c + 1]) and the whole batch's, and the batch's size.
  std::vector<double> shard_sums, batch_sums;
  double batch_count = 0;
  // Scratch of each channel (made here, outside the parallel regions): 2 kSumTerms partial sums,
  // the saved mean, the shard's two sums, grad_x = a * g + b * x + shift's coefficients and the
  // sum of grad_x.
  std::vector<double> partials, means, local_sums, grad_x_totals;
  std::vector<T> a, b, shift;

  NormBackward(const Tensor& x_, const Tensor& gamma_, const Tensor& save_mean_,
               const Tensor& save_invstd_, Tensor& grad_x_, Tensor& grad_gamma_,
               Tensor& grad_beta_, Tensor& grad_x_sums_)
      : x(x_.data<T>()),
        gamma(data_or_null<T>(gamma_)),
        save_mean(save_mean_.data<T>()),
        save_invstd(save_invstd_.data<T>()),
        grad_x(data_or_null<T>(grad_x_)),
        grad_gamma(data_or_null<T>(grad_gamma_)),
        grad_beta(data_or_null<T>(grad_beta_)),
        grad_x_sums(data_or_null<T>(grad_x_sums_)),
        N(x_.size(0)),
        C(x_.size(1)),
        area(x_.size(2) * x_.size(3)),
        partials(2 * C * kSumTerms),
        means(C),
        local_sums(2 * C),
        grad_x_totals(C),
        a(C),
        b(C),
        shift(C) {
    for (std::int64_t c = 0; c < C; ++c) means[c] = save_mean[c];
  }

  // grad_y, x and grad_x.
  ChannelBlocks blocks() const { return {C, 3 * N * area * std::int64_t{sizeof(T)}}; }
  // grad_y's planes of channels [c0, c1) in a contiguous (N, C, H, W) tensor at gy.
  ChannelPlanesOf<T> grad_planes(const T* gy, std::int64_t c0, std::int64_t c1) const {
    return {gy + c0 * area, C * area, area, N, c1 - c0, area};
  }

  // Channels [c0, c1)'s sums of g and of g * (x - mean) into sums[2k, 2k + 2), from the planes g
  // of those channels.
  void block_sums(std::int64_t c0, std::int64_t c1, const ChannelPlanesOf<T>& g, double* sums) {
    const std::int64_t count = c1 - c0;
    double* own = &partials[2 * c0 * kSumTerms];
    std::fill(own, own + 2 * count * kSumTerms, 0.0);
    grad_and_product_into_partials(g, ChannelPlanesOf<T>{x + c0 * area, C * area, area, N, count, area}, &means[c0],
                                   own);
    for (std::int64_t j = 0; j < 2 * count; ++j) sums[j] = combine_partial_sums(own + j * kSumTerms);
  }

  // After block_sums has filled shard_sums (2C) for every channel: the whole batch's.
  void share_sums(const ShardSum& shard_sum) {
    batch_sums = shard_sums;
    batch_sums.push_back(static_cast<double>(N * area));
    shard_sum(batch_sums.data(), 2 * C + 1);
    batch_count = batch_sums[2 * C];
  }

  // Channels [c0, c1)'s gradients, from the planes g of grad_y (each read twice). gamma's and
  // beta's are this shard's, grad_x the whole batch's (share_sums, where it was called).
  void block(std::int64_t c0, std::int64_t c1, const ChannelPlanesOf<T>& g) {
    const std::int64_t count = c1 - c0;
    if (shard_sums.empty()) block_sums(c0, c1, g, &local_sums[2 * c0]);
    // grad_x = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)), with xhat = (x - mean) *
    // invstd folded per channel into grad_x = a * g + b * x + shift (in T: a vector loop).
    for (std::int64_t c = c0; c < c1; ++c) {
      const double invstd = save_invstd[c];
      const double* sums = shard_sums.empty() ? &local_sums[2 * c] : &shard_sums[2 * c];
      if (grad_beta) grad_beta[c] = static_cast<T>(sums[0]);
      if (grad_gamma) grad_gamma[c] = static_cast<T>(sums[1] * invstd);
      const double mean = save_mean[c];
      const double values = batch_sums.empty() ? static_cast<double>(N * area) : batch_count;
      if (!batch_sums.empty()) sums = &batch_sums[2 * c];
      const double sum_g = sums[0], sum_g_xhat = sums[1] * invstd;
      const double scale = (gamma ? gamma[c] : 1.0) * invstd;
      const double mean_g = sum_g / values;
      const double mean_gx = sum_g_xhat / values;
      a[c] = static_cast<T>(scale);
      b[c] = static_cast<T>(-scale * invstd * mean_gx);
      shift[c] = static_cast<T>(scale * (mean * invstd * mean_gx - mean_g));
    }
    if (!grad_x) return;
    const ChannelPlanesOf<T> x_planes{x + c0 * area, C * area, area, N, count, area};
    if (!grad_x_sums) return norm_grad_planes(g, x_planes, grad_x + c0 * area, &a[c0], &b[c0], &shift[c0]);
    // Each plane summed as conv.cpp's bias_grad sums, while it is in cache.
    std::fill(&grad_x_totals[c0], &grad_x_totals[c0] + count, 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      const auto image = [n](ChannelPlanesOf<T> planes) {
        planes.first = planes.plane(n, 0);
        planes.images = 1;
        return planes;
      };
      T* out = grad_x + (n * C + c0) * area;
      norm_grad_planes(image(g), image(x_planes), out, &a[c0], &b[c0], &shift[c0]);
      for (std::int64_t k = 0; k < count; ++k) grad_x_totals[c0 + k] += sum_elements(out + k * area, area);
    }
    for (std::int64_t c = c0; c < c1; ++c) grad_x_sums[c] = static_cast<T>(grad_x_totals[c]);
  }
};

}  // namespace

// x, y: same shape, contiguous.
void activation_forward(Activation kind, double negative_slope, const Tensor& x, Tensor& y) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_kernel<T>(kind, static_cast<T>(negative_slope), x.data<T>(), y.data<T>(),
                         x.numel());
  });
}

// a, b, y: same shape, contiguous; y may alias a or b.
void add(const Tensor& a, const Tensor& b, Tensor& y, bool relu) {
  dispatch_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* ad = a.data<T>();
    const T* bd = b.data<T>();
    if (relu) {
      for_each_index(a.numel(), y.data<T>(), [ad, bd](std::int64_t i) {
        const T v = ad[i] + bd[i];
        return v < T(0) ? T(0) : v;
      });
    } else {
      for_each_index(a.numel(), y.data<T>(), [ad, bd](std::int64_t i) { return ad[i] + bd[i]; });
    }
  });
}

void round_to_bfloat16(const Tensor& x, Tensor& y) {
  const std::int64_t n = x.numel();
  const RoundToBfloat16 kernel = active_kernels().round_to_bfloat16_f32;
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  constexpr std::int64_t kChunk = 8192;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= kParallelGrain)
  for (std::int64_t first = 0; first < n; first += kChunk) kernel(xd + first, yd + first, std::min(kChunk, n - first));
}

// grad_y, x, y (or null), grad_x: same shape, contiguous.
void activation_backward(Activation kind, double negative_slope, const Tensor& grad_y,
                         const Tensor& x, const Tensor* y, Tensor& grad_x) {
  dispatch_float(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_backward_kernel<T>(kind, static_cast<T>(negative_slope), grad_y.data<T>(),
                                  x.data<T>(), y ? y->data<T>() : nullptr, grad_x.data<T>(),
                                  grad_y.numel());
  });
}

// x, grad_out (or undefined: the forward), out (outer, D, inner), contiguous.
void softmax_lines(const Tensor& x, const Tensor& grad_out, Tensor& out, const SoftmaxLines& l,
                   bool log) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* od = out.data<T>();
    if (!grad_out.defined()) {
      if (log) softmax_kernel<T, SoftmaxOp::log_softmax>(xd, nullptr, od, l);
      else softmax_kernel<T, SoftmaxOp::softmax>(xd, nullptr, od, l);
      return;
    }
    const T* gd = grad_out.data<T>();
    if (log) softmax_kernel<T, SoftmaxOp::log_softmax_backward>(xd, gd, od, l);
    else softmax_kernel<T, SoftmaxOp::softmax_backward>(xd, gd, od, l);
  });
}

// x, mask, y: same shape, contiguous. p = 1 drops everything (mask 0).
void dropout_forward(const Tensor& x, double p, std::uint64_t seed, Tensor& mask, Tensor& y) {
  const std::int64_t n = x.numel();
  const double scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
  if (x.dtype() == DType::float32) {
    // uniform_at(seed, i) >= p exactly when its 53-bit integer is >= ceil(p * 2^53).
    const auto threshold = static_cast<std::uint64_t>(std::ceil(p * 0x1p53));
    const Dropout kernel = active_kernels().dropout_f32;
    constexpr std::int64_t kChunk = 4096;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= kParallelGrain)
    for (std::int64_t first = 0; first < n; first += kChunk)
      kernel({x.data<float>() + first, mask.data<float>() + first, y.data<float>() + first,
              std::min(kChunk, n - first), seed, static_cast<std::uint64_t>(first), threshold, static_cast<float>(scale)});
    return;
  }
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* md = mask.data<T>();
    T* yd = y.data<T>();
    const T keep = static_cast<T>(scale);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= kParallelGrain)
    for (std::int64_t i = 0; i < n; ++i) {
      md[i] = uniform_at(seed, static_cast<std::uint64_t>(i)) >= p ? keep : T(0);
      yd[i] = xd[i] * md[i];
    }
  });
}

// grad_y, mask, grad_x: same shape, contiguous; grad_x may alias grad_y.
void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x) {
  const std::int64_t n = grad_y.numel();
  dispatch_float(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    const T* md = mask.data<T>();
    for_each_index(n, grad_x.data<T>(), [gy, md](std::int64_t i) { return gy[i] * md[i]; });
  });
}

void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd, bool relu, const ShardSum& shard_sum) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    NormForward<T> norm(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                        save_mean, save_invstd);
    norm.share_statistics(shard_sum);
    T* yd = y.data<T>();
    std::vector<T> scales(norm.C), shifts(norm.C);
    const ChannelBlocks blocks = norm.blocks();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (x.numel() >= kParallelGrain)
    for (std::int64_t block = 0; block < blocks.count(); ++block) {
      const std::int64_t c0 = blocks.begin(block), c1 = blocks.end(block);
      norm.block_affine(c0, c1, &scales[c0], &shifts[c0]);
      normalize_planes(norm.planes(c0, c1), yd + c0 * norm.area, &scales[c0], &shifts[c0], relu);
    }
  });
}

// Plane x normalized (x * scale + shift), the ReLU applied, then max-pooled into `pooled` and
// `argmax` (may be null): in the pooling kernel's registers where in_kernel (plain 2x2 windows,
// float32), else through `normalized` (scratch for the plane's area). The forward and the
// backward (which finds each window's maximum again) run the same code, so they agree bit for bit.
template <class T>
void norm_relu_max_pool_plane(const PoolGeometry& pool, const T* x, T scale, T shift, bool in_kernel,
                              T* normalized, T* pooled, std::int64_t* argmax) {
  if constexpr (std::is_same_v<T, float>) {
    if (in_kernel) {
      active_kernels().max_pool_2x2_f32({x, pool.W, pool.Q, pooled, argmax, 0, pool.P, pool.Q, true, scale, shift});
      return;
    }
  }
  normalize_plane(x, normalized, pool.H * pool.W, scale, shift, true);
  max_pool_plane(pool, normalized, pooled, argmax);
}

template <class T>
bool norm_pool_in_kernel(const PoolGeometry& pool) {
  return std::is_same_v<T, float> && is_plain_2x2(pool);
}

// The normalized tensor, the largest of the three layers' outputs, is neither written nor read
// back, and no argmax is kept: the backward finds the windows' maxima again from x and `affine`.
void batch_norm2d_relu_max_pool_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        Tensor& running_mean, Tensor& running_var, bool training,
                                        double momentum, double eps, const PoolGeometry& pool,
                                        Tensor& y, Tensor& affine, Tensor& save_mean,
                                        Tensor& save_invstd, const ShardSum& shard_sum) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    NormForward<T> norm(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                        save_mean, save_invstd);
    norm.share_statistics(shard_sum);
    T* yd = y.data<T>();
    T* affine_data = data_or_null<T>(affine);
    const std::int64_t pooled_area = pool.P * pool.Q;
    const bool in_kernel = norm_pool_in_kernel<T>(pool);
    RegionErrors errors;
    // A quarter of the usual grain: normalizing, the ReLU and the window's maximum are several
    // operations an element (in eval mode, a batch of one: 32 planes of 28x28 13.3 -> 10.3 us on
    // two threads, 64 of 14x14 10.0 -> 8.0).
#pragma omp parallel num_threads(::juanji::team_size()) if (x.numel() >= kParallelGrain / 4)
    {
      T* normalized = nullptr;
      if (!in_kernel) errors.guard([&] { normalized = workspace<T>(WorkspaceSlot::norm_planes, norm.area); });
      // After the barrier every thread sees the same verdict and skips the loop together.
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t c = 0; c < (errors.failed() ? 0 : norm.C); ++c) {
        const auto [scale, shift] = norm.channel(c);
        if (affine_data) {
          affine_data[2 * c] = scale;
          affine_data[2 * c + 1] = shift;
        }
        for (std::int64_t n = 0; n < norm.N; ++n)
          norm_relu_max_pool_plane(pool, norm.plane(n, c), scale, shift, in_kernel, normalized,
                                   yd + (n * norm.C + c) * pooled_area, static_cast<std::int64_t*>(nullptr));
      }
    }
    errors.rethrow();
  });
}

void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta, Tensor& grad_x_sums,
                           const ShardSum& shard_sum) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    NormBackward<T> norm(x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                         grad_x_sums);
    const T* gy = grad_y.data<T>();
    const ChannelBlocks blocks = norm.blocks();
    if (shard_sum) {
      norm.shard_sums.resize(2 * norm.C);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (x.numel() >= kParallelGrain)
      for (std::int64_t block = 0; block < blocks.count(); ++block) {
        const std::int64_t c0 = blocks.begin(block), c1 = blocks.end(block);
        norm.block_sums(c0, c1, norm.grad_planes(gy, c0, c1), &norm.shard_sums[2 * c0]);
      }
      norm.share_sums(shard_sum);
    }
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (x.numel() >= kParallelGrain)
    for (std::int64_t block = 0; block < blocks.count(); ++block) {
      const std::int64_t c0 = blocks.begin(block), c1 = blocks.end(block);
      norm.block(c0, c1, norm.grad_planes(gy, c0, c1));
    }
  });
}

// Each channel's planes of grad_y are scattered from the pooled gradient into a per-thread
// scratch (N planes: the sums and grad_x each read them) instead of a tensor of x's size, each
// plane's window maxima found again as the forward found them.
void batch_norm2d_relu_max_pool_backward(const PoolGeometry& pool, const Tensor& grad_y,
                                         const Tensor& affine, const Tensor& x, const Tensor& gamma,
                                         const Tensor& save_mean, const Tensor& save_invstd,
                                         Tensor& grad_x, Tensor& grad_gamma, Tensor& grad_beta,
                                         Tensor& grad_x_sums, const ShardSum& shard_sum) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    NormBackward<T> norm(x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                         grad_x_sums);
    const T* gy = grad_y.data<T>();
    const T* affine_data = affine.data<T>();
    const std::int64_t pooled_area = pool.P * pool.Q;
    const bool in_kernel = norm_pool_in_kernel<T>(pool);
    // Scratch pieces in one workspace, each a multiple of 64 bytes: the scattered gradient, and
    // outside the kernel a plane normalized, pooled and its argmaxes.
    const auto padded = [](std::int64_t bytes) { return (bytes + 63) / 64 * 64; };
    const std::int64_t scattered_bytes = padded(norm.N * norm.area * std::int64_t{sizeof(T)});
    const std::int64_t normalized_bytes = in_kernel ? 0 : padded(norm.area * std::int64_t{sizeof(T)});
    const std::int64_t pooled_bytes = in_kernel ? 0 : padded(pooled_area * std::int64_t{sizeof(T)});
    const std::int64_t argmax_bytes = in_kernel ? 0 : pooled_area * std::int64_t{sizeof(std::int64_t)};
    const std::int64_t scratch_bytes = scattered_bytes + normalized_bytes + pooled_bytes + argmax_bytes;
    // Runs channel_work(c, grad_plane) for every channel with its planes of grad_y scattered.
    const auto for_each_channel = [&](const auto& channel_work) {
      RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size()) if (x.numel() >= kParallelGrain)
      {
        char* scratch = nullptr;
        errors.guard([&] { scratch = workspace<char>(WorkspaceSlot::norm_planes, scratch_bytes); });
        // After the barrier every thread sees the same verdict and skips the loop together.
#pragma omp barrier
        T* scattered = reinterpret_cast<T*>(scratch);
        T* normalized = in_kernel ? nullptr : reinterpret_cast<T*>(scratch + scattered_bytes);
        T* pooled = reinterpret_cast<T*>(scratch + scattered_bytes + normalized_bytes);
        auto* argmax = reinterpret_cast<std::int64_t*>(scratch + scattered_bytes + normalized_bytes + pooled_bytes);
#pragma omp for schedule(static)
        for (std::int64_t c = 0; c < (errors.failed() ? 0 : norm.C); ++c) {
          for (std::int64_t n = 0; n < norm.N; ++n) {
            const std::int64_t plane = n * norm.C + c;
            // The next image's plane, one page or more away: fetched while this one is pooled.
            if (n + 1 < norm.N)
              for (std::int64_t i = 0; i < norm.area; i += 64 / std::int64_t{sizeof(T)})
                __builtin_prefetch(norm.x + (plane + norm.C) * norm.area + i);
            T* scattered_plane = scattered + n * norm.area;
            if constexpr (std::is_same_v<T, float>) {
              // The windows' maxima found again and the gradient spread in one pass.
              if (in_kernel) {
                norm_relu_max_pool_scatter_plane(pool, norm.x + plane * norm.area, affine_data[2 * c],
                                                 affine_data[2 * c + 1], gy + plane * pooled_area, scattered_plane);
                continue;
              }
            }
            norm_relu_max_pool_plane(pool, norm.x + plane * norm.area, affine_data[2 * c], affine_data[2 * c + 1],
                                     false, normalized, pooled, argmax);
            scatter_max_pool_plane(pool, gy + plane * pooled_area, argmax, pooled, scattered_plane);
          }
          channel_work(c, ChannelPlanesOf<T>{scattered, norm.area, 0, norm.N, 1, norm.area});
        }
      }
      errors.rethrow();
    };
    if (shard_sum) {
      // The whole batch's sums first: each channel's planes are scattered twice.
      norm.shard_sums.resize(2 * norm.C);
      for_each_channel([&](std::int64_t c, const auto& grad_plane) {
        norm.block_sums(c, c + 1, grad_plane, &norm.shard_sums[2 * c]);
      });
      norm.share_sums(shard_sum);
    }
    for_each_channel([&](std::int64_t c, const auto& grad_plane) { norm.block(c, c + 1, grad_plane); });
  });
}

}  // namespace juanji::cpu
