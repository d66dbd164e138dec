// Fully connected layer on CUDA through the tiled GEMM engine:
//   y = x w^T + b    M = N, N = out, K = in      (both operands contiguous along k)
//   dx = dy w        M = N, N = in,  K = out
//   dw = dy^T x      M = out, N = in, K = N      (split-K over the batch, partials added in order)
//   db = column sums of dy in double: each block takes 32 columns, its 8 warps every 8th row,
//        and the 8 partial sums are added in a fixed order.
#include "cuda/common.cuh"
#include "cuda/gemm_tiles.cuh"
#include "cuda/ops.hpp"

namespace juanji::cuda {
namespace {

template <class T>
struct LinearOutput {
  T* y;
  const T* bias;
  index_t out;
  bool activate_output;
  Activation kind;
  T slope;
  __device__ void operator()(index_t, index_t, index_t m, index_t j, T v) const {
    if (bias) v += bias[j];
    if (activate_output) v = activate(kind, slope, v);
    y[m * out + j] = v;
  }
};

template <class T>
void forward(index_t N, index_t in, index_t out, const T* x, const T* w, const T* b, T* y,
             FusedActivation act) {
  const GemmShape shape{N, out, in, 1, 1};
  const LinearOutput<T> store{y, b, out, act.enabled, act.kind, static_cast<T>(act.negative_slope)};
  with_tiles<T>(shape.M, shape.N, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch_gemm<T, Cfg>(shape, RowsAlongK<T, Cfg, Cfg::BM>{x, N, in, 0},
                        RowsAlongK<T, Cfg, Cfg::BN>{w, out, in, 0}, store);
  });
}

template <class T>
void backward_data(index_t N, index_t in, index_t out, const T* dy, const T* w, T* dx) {
  const GemmShape shape{N, in, out, 1, 1};
  with_tiles<T>(shape.M, shape.N, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch_gemm<T, Cfg>(shape, RowsAlongK<T, Cfg, Cfg::BM>{dy, N, out, 0},
                        RowsAcrossK<T, Cfg, Cfg::BN>{w, in, in, 0}, StoreMatrix<T>{dx, in, 0, 0});
  });
}

template <class T>
void backward_weight(index_t N, index_t in, index_t out, const T* dy, const T* x, T* dw,
                     const Tensor& like) {
  GemmShape shape{out, in, N, 1, 1};
  with_tiles<T>(shape.M, shape.N, [&](auto cfg) {
    using Cfg = decltype(cfg);
    shape.splits = pick_splits<Cfg>(shape);
    const index_t weights = out * in;
    T* dst = shape.splits > 1
                 ? static_cast<T*>(scratch(like, Scratch::first,
                                           sizeof(T) * static_cast<std::size_t>(shape.splits * weights)))
                 : dw;
    launch_gemm<T, Cfg>(shape, RowsAcrossK<T, Cfg, Cfg::BM>{dy, out, out, 0},
                        RowsAcrossK<T, Cfg, Cfg::BN>{x, in, in, 0}, StoreMatrix<T>{dst, in, 0, weights});
    if (shape.splits > 1) {
      sum_splits<T><<<grid_for(weights), kBlockThreads>>>(dst, shape.splits, weights, dw);
      JUANJI_CUDA_CHECK_LAUNCH();
    }
  });
}

constexpr int kSumColumns = 32, kRowGroups = kBlockThreads / kSumColumns;

// db[o] = sum over rows n of dy[n, o]. A warp reads 32 adjacent columns of a row (coalesced).
template <class T>
__global__ void column_sums(const T* dy, index_t N, index_t out, T* db) {
  __shared__ double partial[kRowGroups][kSumColumns];
  const int lane = threadIdx.x % kSumColumns, group = threadIdx.x / kSumColumns;
  for (index_t first = static_cast<index_t>(blockIdx.x) * kSumColumns; first < out;
       first += static_cast<index_t>(gridDim.x) * kSumColumns) {
    const index_t o = first + lane;
    double sum = 0;
    if (o < out)
      for (index_t n = group; n < N; n += kRowGroups) sum += static_cast<double>(dy[n * out + o]);
    partial[group][lane] = sum;
    __syncthreads();
    if (group == 0 && o < out) {
      double total = 0;
      for (int g = 0; g < kRowGroups; ++g) total += partial[g][lane];
      db[o] = static_cast<T>(total);
    }
    __syncthreads();  // the partials are rewritten for the next columns
  }
}

// x (N, in) and w (out, in): the shapes every linear kernel starts from.
void check_shapes(const char* op, const Tensor& x, const Tensor& w) {
  check_float(x, "x");
  check_float(w, "weight");
  check(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), op, ": expected x (N, in) and weight (out, in), got x ",
        shape_text(x.shape()), " and weight ", shape_text(w.shape()));
  check_operand(x, op, "x", x.device(), x.dtype(), x.numel());
  check_operand(w, op, "weight", x.device(), x.dtype(), w.numel());
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y, FusedActivation activation) {
  const char* op = "linear_forward";
  check_shapes(op, x, w);
  const index_t N = x.size(0), in = x.size(1), out = w.size(0);
  if (b.defined()) check_operand(b, op, "bias", x.device(), x.dtype(), out);
  check_operand(y, op, "y", x.device(), x.dtype(), N * out);
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    forward<T>(N, in, out, data_of<T>(x), data_of<T>(w), optional_data_of<T>(b), data_of<T>(y), activation);
  });
}

void linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                     Tensor& grad_w, Tensor& grad_b) {
  const char* op = "linear_backward";
  check_shapes(op, x, w);
  const index_t N = x.size(0), in = x.size(1), out = w.size(0);
  check_operand(grad_y, op, "grad_y", x.device(), x.dtype(), N * out);
  if (grad_x.defined()) check_operand(grad_x, op, "grad_x", x.device(), x.dtype(), N * in);
  if (grad_w.defined()) check_operand(grad_w, op, "grad_w", x.device(), x.dtype(), out * in);
  if (grad_b.defined()) check_operand(grad_b, op, "grad_b", x.device(), x.dtype(), out);
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* dy = data_of<T>(grad_y);
    if (grad_x.defined()) backward_data<T>(N, in, out, dy, data_of<T>(w), data_of<T>(grad_x));
    if (grad_w.defined()) backward_weight<T>(N, in, out, dy, data_of<T>(x), data_of<T>(grad_w), x);
    if (grad_b.defined()) {
      column_sums<T><<<blocks_for(ceil_div(out, kSumColumns)), kBlockThreads>>>(dy, N, out, data_of<T>(grad_b));
      JUANJI_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace juanji::cuda
