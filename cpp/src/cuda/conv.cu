// Convolution on CUDA as implicit GEMM (no im2col matrix is ever stored), per group:
//   forward      y[n,k,p,q] = sum_(c,r,s) w[k,c,r,s] x[n,c,p*sh-pt+r*dh,q*sw-pl+s*dw] + b[k]
//                GEMM M = K/groups, N = N*P*Q, K = C/groups*R*S; B gathered from x on the fly
//   data grad    dx[n,c,h,w] = sum_(k,r,s) w[k,c,r,s] dy[n,k,p,q] over the (p,q) whose window
//                tap (r,s) lands on (h,w): GEMM M = C/groups, N = N*H*W, K = K/groups*R*S, or
//                for few channels per group a direct gather over the taps that have an output.
//                A gather, not col2im's scatter, so every dx element has one writer.
//   weight grad  dw[k,(c,r,s)] = sum_(n,p,q) dy[n,k,p,q] x[n,c,ih,iw]: GEMM M = K/groups,
//                N = C/groups*R*S, K = N*P*Q, split-K into fixed chunks whose partials are added
//                in chunk order (no float atomics: the same bits on every run).
//   bias grad    db[k] = sum over (n,p,q) of dy in double, fixed chunks then chunks in order.
// The forward and data-gradient GEMMs split K too when their output has few tiles.
// conv1d arrives here as conv2d with H = R = 1.
#include <algorithm>
#include <numeric>

#include "cuda/common.cuh"
#include "cuda/gemm_tiles.cuh"
#include "cuda/ops.hpp"

namespace juanji::cuda {
namespace {

// The geometry with the per-group sizes the kernels index with.
struct ConvDims {
  index_t N, C, H, W, K, R, S, P, Q;
  index_t stride_h, stride_w, pad_top, pad_left, dil_h, dil_w;
  index_t groups, Cg, Kg, RS, HW, PQ;
};

ConvDims dims_of(const ConvGeometry& g) {
  return {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_top, g.pad_left,
          g.dil_h, g.dil_w, g.groups, g.C / g.groups, g.K / g.groups, g.R * g.S, g.H * g.W, g.P * g.Q};
}

// ---- forward ----------------------------------------------------------------------------

// B[k = (c, r, s), j = (n, p, q)]: the input tap that filter element (c, r, s) sees at output
// (n, p, q), zero in the padding. Consecutive threads take consecutive q.
template <class T, class Cfg>
struct InputColumns {
  using Map = SliceMap<Cfg, Cfg::BN, false>;
  struct State {
    const T* image;  // the column's image at its group's first channel; null past the last column
    index_t ih0, iw0;
    int tid;
  };
  const T* x;
  ConvDims d;
  __device__ State begin(index_t grp, index_t first, int tid) const {
    const index_t j = first + Map::line_of(tid, 0);
    if (j >= d.N * d.PQ) return {nullptr, 0, 0, tid};
    const index_t n = div_nonneg(j, d.PQ), pq = j - n * d.PQ, p = div_nonneg(pq, d.Q), q = pq - p * d.Q;
    return {x + (n * d.C + grp * d.Cg) * d.HW, p * d.stride_h - d.pad_top, q * d.stride_w - d.pad_left, tid};
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t k = k0 + Map::k_of(st.tid, i);
      T v = T(0);
      if (st.image && k < k_end) {
        const index_t c = div_nonneg(k, d.RS), rs = k - c * d.RS, r = div_nonneg(rs, d.S), s = rs - r * d.S;
        const index_t ih = st.ih0 + r * d.dil_h, iw = st.iw0 + s * d.dil_w;
        if (ih >= 0 && ih < d.H && iw >= 0 && iw < d.W) v = st.image[(c * d.H + ih) * d.W + iw];
      }
      regs[i] = v;
    }
  }
};

template <class T>
struct ForwardOutput {
  T* y;
  const T* bias;
  ConvDims d;
  bool activate_output;
  Activation kind;
  T slope;
  __device__ void operator()(index_t grp, index_t, index_t m, index_t j, T v) const {
    const index_t n = div_nonneg(j, d.PQ), pq = j - n * d.PQ, k = grp * d.Kg + m;
    if (bias) v += bias[k];
    if (activate_output) v = activate(kind, slope, v);
    y[(n * d.K + k) * d.PQ + pq] = v;
  }
};

template <class T>
void forward(const ConvDims& d, const T* x, const T* w, const T* bias, T* y, FusedActivation act,
             const Tensor& like) {
  const GemmShape shape{d.Kg, d.N * d.PQ, d.Cg * d.RS, d.groups, 1};
  const ForwardOutput<T> out{y, bias, d, act.enabled, act.kind, static_cast<T>(act.negative_slope)};
  with_tiles<T>(shape.M, shape.N, [&](auto cfg) {
    using Cfg = decltype(cfg);
    const RowsAlongK<T, Cfg, Cfg::BM> weights{w, d.Kg, d.Cg * d.RS, d.Kg * d.Cg * d.RS};
    launch_gemm_filling<T, Cfg>(shape, weights, InputColumns<T, Cfg>{x, d}, out, like, Scratch::first);
  });
}

// ---- data gradient ----------------------------------------------------------------------

// A[m = c, k = (kf, r, s)] = w[grp*Kg + kf, c, r, s]: the transposed weights of the group.
template <class T, class Cfg>
struct TransposedWeights {
  using Map = SliceMap<Cfg, Cfg::BM, true>;
  struct State {
    const T* group_w;
    index_t first;
    int tid;
  };
  const T* w;
  ConvDims d;
  __device__ State begin(index_t grp, index_t first, int tid) const {
    return {w + grp * d.Kg * d.Cg * d.RS, first, tid};
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
    const index_t k = k0 + Map::k_of(st.tid, 0);
    const index_t kf = div_nonneg(k, d.RS), rs = k - kf * d.RS;
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t c = st.first + Map::line_of(st.tid, i);
      regs[i] = k < k_end && c < d.Cg ? st.group_w[(kf * d.Cg + c) * d.RS + rs] : T(0);
    }
  }
};

// B[k = (kf, r, s), j = (n, h, w)] = dy[n, grp*Kg+kf, p, q] for the output (p, q) whose tap
// (r, s) reads input (h, w), zero when there is none (between strides or outside).
template <class T, class Cfg>
struct ErrorColumns {
  using Map = SliceMap<Cfg, Cfg::BN, false>;
  struct State {
    const T* errors;  // the column's image at its group's first filter; null past the last column
    index_t hp, wp;   // h + pad_top, w + pad_left
    int tid;
  };
  const T* dy;
  ConvDims d;
  __device__ State begin(index_t grp, index_t first, int tid) const {
    const index_t j = first + Map::line_of(tid, 0);
    if (j >= d.N * d.HW) return {nullptr, 0, 0, tid};
    const index_t n = div_nonneg(j, d.HW), hw = j - n * d.HW, h = div_nonneg(hw, d.W);
    return {dy + (n * d.K + grp * d.Kg) * d.PQ, h + d.pad_top, hw - h * d.W + d.pad_left, tid};
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t k = k0 + Map::k_of(st.tid, i);
      T v = T(0);
      if (st.errors && k < k_end) {
        const index_t kf = div_nonneg(k, d.RS), rs = k - kf * d.RS;
        const index_t r = div_nonneg(rs, d.S), s = rs - r * d.S;
        const index_t ph = st.hp - r * d.dil_h, pw = st.wp - s * d.dil_w;
        if (ph >= 0 && pw >= 0) {
          const index_t p = div_nonneg(ph, d.stride_h), q = div_nonneg(pw, d.stride_w);
          const bool on_stride = p * d.stride_h == ph && q * d.stride_w == pw;
          if (on_stride && p < d.P && q < d.Q) v = st.errors[(kf * d.P + p) * d.Q + q];
        }
      }
      regs[i] = v;
    }
  }
};

template <class T>
struct DataGradOutput {
  T* dx;
  ConvDims d;
  __device__ void operator()(index_t grp, index_t, index_t m, index_t j, T v) const {
    const index_t n = div_nonneg(j, d.HW), hw = j - n * d.HW;
    dx[(n * d.C + grp * d.Cg + m) * d.HW + hw] = v;
  }
};

// The data gradient of a layer with few channels per group (the first layer of a network,
// depthwise ones): one thread per input pixel (n, group, h, w) gathers all the group's channels
// at once, visiting only the taps that have an output. As a GEMM those layers would fill 1 to 8
// of a tile's 16 rows and decode every tap, strided away or not, per element.
constexpr int kDirectChannels = 8;

// Along one axis, the taps whose output position (coord + pad - tap * dil) / stride is whole:
// every `step`-th one (step = stride / gcd(stride, dil)) from the first among the first `step`.
// When none of those is (gcd(stride, dil) does not divide coord + pad), no tap is: `taps`.
__device__ inline index_t first_tap_on_stride(index_t padded, index_t dil, index_t stride,
                                              index_t step, index_t taps) {
  for (index_t tap = 0; tap < step && tap < taps; ++tap)
    if ((padded - tap * dil) % stride == 0) return tap;
  return taps;
}

template <class T, int Channels>
__global__ void backward_data_direct(ConvDims d, index_t step_h, index_t step_w, const T* dy,
                                     const T* w, T* dx) {
  const index_t pixels = d.N * d.groups * d.HW, filter_stride = d.Cg * d.RS;
  for (index_t i = global_thread(); i < pixels; i += global_stride()) {
    const index_t image_group = div_nonneg(i, d.HW), hw = i - image_group * d.HW;
    const index_t n = div_nonneg(image_group, d.groups), grp = image_group - n * d.groups;
    const index_t h = div_nonneg(hw, d.W), col = hw - h * d.W;
    const index_t padded_h = h + d.pad_top, padded_w = col + d.pad_left;
    const index_t first_s = first_tap_on_stride(padded_w, d.dil_w, d.stride_w, step_w, d.S);
    const T* group_dy = dy + (n * d.K + grp * d.Kg) * d.PQ;
    const T* group_w = w + grp * d.Kg * filter_stride;
    T acc[Channels];
#pragma unroll
    for (int c = 0; c < Channels; ++c) acc[c] = T(0);
    // Later taps read earlier outputs: once ph (pw) is negative it stays so.
    const index_t first_r = first_tap_on_stride(padded_h, d.dil_h, d.stride_h, step_h, d.R);
    for (index_t r = first_r; r < d.R; r += step_h) {
      const index_t ph = padded_h - r * d.dil_h;
      if (ph < 0) break;
      const index_t p = div_nonneg(ph, d.stride_h);
      if (p >= d.P) continue;
      for (index_t s = first_s; s < d.S; s += step_w) {
        const index_t pw = padded_w - s * d.dil_w;
        if (pw < 0) break;
        const index_t q = div_nonneg(pw, d.stride_w);
        if (q >= d.Q) continue;
        const T* errors = group_dy + p * d.Q + q;
        const T* filter = group_w + r * d.S + s;
#pragma unroll 4
        for (index_t kf = 0; kf < d.Kg; ++kf, errors += d.PQ, filter += filter_stride) {
          const T g = *errors;
#pragma unroll
          for (int c = 0; c < Channels; ++c) acc[c] += g * filter[c * d.RS];
        }
      }
    }
    T* out = dx + (n * d.C + grp * d.Cg) * d.HW + hw;
#pragma unroll
    for (int c = 0; c < Channels; ++c) out[c * d.HW] = acc[c];
  }
}

// Launches backward_data_direct compiled for exactly d.Cg channels (1 to kDirectChannels): a
// loop over a run-time count would issue all kDirectChannels predicated loads and FMAs per tap.
template <class T, int Channels = 1>
void launch_backward_data_direct(const ConvDims& d, const T* dy, const T* w, T* dx) {
  if constexpr (Channels < kDirectChannels) {
    if (d.Cg != Channels) return launch_backward_data_direct<T, Channels + 1>(d, dy, w, dx);
  }
  const index_t step_h = d.stride_h / std::gcd(d.stride_h, d.dil_h);
  const index_t step_w = d.stride_w / std::gcd(d.stride_w, d.dil_w);
  backward_data_direct<T, Channels><<<grid_for(d.N * d.groups * d.HW), kBlockThreads>>>(
      d, step_h, step_w, dy, w, dx);
  JUANJI_CUDA_CHECK_LAUNCH();
}

template <class T>
void backward_data(const ConvDims& d, const T* dy, const T* w, T* dx, const Tensor& like) {
  if (d.Cg <= kDirectChannels) return launch_backward_data_direct<T>(d, dy, w, dx);
  const GemmShape shape{d.Cg, d.N * d.HW, d.Kg * d.RS, d.groups, 1};
  with_tiles<T>(shape.M, shape.N, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch_gemm_filling<T, Cfg>(shape, TransposedWeights<T, Cfg>{w, d}, ErrorColumns<T, Cfg>{dy, d},
                                DataGradOutput<T>{dx, d}, like, Scratch::first);
  });
}

// ---- weight gradient --------------------------------------------------------------------

// A[m = kf, k = (n, p, q)] = dy[n, grp*Kg+m, p, q]: contiguous along k within an image.
template <class T, class Cfg>
struct ErrorRows {
  using Map = SliceMap<Cfg, Cfg::BM, true>;
  struct State {
    const T* group_dy;  // image 0's first filter of the group
    index_t first;
    int tid;
  };
  const T* dy;
  ConvDims d;
  __device__ State begin(index_t grp, index_t first, int tid) const {
    return {dy + grp * d.Kg * d.PQ, first, tid};
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
    const index_t k = k0 + Map::k_of(st.tid, 0);
    const index_t n = div_nonneg(k, d.PQ);
    const index_t at = n * d.K * d.PQ + (k - n * d.PQ);
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t m = st.first + Map::line_of(st.tid, i);
      regs[i] = k < k_end && m < d.Kg ? st.group_dy[at + m * d.PQ] : T(0);
    }
  }
};

// B[k = (n, p, q), col = (c, r, s)]: the input tap of filter element (c, r, s) at output
// (n, p, q). A thread's columns are fixed per tile, so their (c, r, s) is decoded once.
template <class T, class Cfg>
struct InputRows {
  using Map = SliceMap<Cfg, Cfg::BN, true>;
  // Columns past the last one get a tap far above the image, so their bounds test fails.
  static constexpr int kNoTap = -(1 << 30);
  struct State {
    index_t channel_offset[Map::kCount];
    int tap_h[Map::kCount], tap_w[Map::kCount];
    int tid;
  };
  const T* x;
  ConvDims d;
  __device__ State begin(index_t grp, index_t first, int tid) const {
    State st;
    st.tid = tid;
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t col = first + Map::line_of(tid, i);
      const index_t c = div_nonneg(col, d.RS), rs = col - c * d.RS, r = div_nonneg(rs, d.S);
      const bool valid = col < d.Cg * d.RS;
      st.channel_offset[i] = (grp * d.Cg + (valid ? c : 0)) * d.HW;
      st.tap_h[i] = valid ? static_cast<int>(r * d.dil_h) : kNoTap;
      st.tap_w[i] = static_cast<int>((rs - r * d.S) * d.dil_w);
    }
    return st;
  }
  __device__ void load(const State& st, index_t k0, index_t k_end, T (&regs)[Map::kCount]) const {
    const index_t k = k0 + Map::k_of(st.tid, 0);
    const index_t n = div_nonneg(k, d.PQ), pq = k - n * d.PQ, p = div_nonneg(pq, d.Q);
    const index_t ih0 = p * d.stride_h - d.pad_top, iw0 = (pq - p * d.Q) * d.stride_w - d.pad_left;
    const T* image = x + n * d.C * d.HW;
#pragma unroll
    for (int i = 0; i < Map::kCount; ++i) {
      const index_t ih = ih0 + st.tap_h[i], iw = iw0 + st.tap_w[i];
      const bool inside = k < k_end && ih >= 0 && ih < d.H && iw >= 0 && iw < d.W;
      regs[i] = inside ? image[st.channel_offset[i] + ih * d.W + iw] : T(0);
    }
  }
};

template <class T>
void backward_weight(const ConvDims& d, const T* dy, const T* x, T* dw, const Tensor& like) {
  const index_t CRSg = d.Cg * d.RS, weights = d.K * CRSg;
  GemmShape shape{d.Kg, CRSg, d.N * d.PQ, d.groups, 1};
  with_tiles<T>(shape.M, shape.N, [&](auto cfg) {
    using Cfg = decltype(cfg);
    shape.splits = pick_splits<Cfg>(shape);
    T* out = shape.splits > 1
                 ? static_cast<T*>(scratch(like, Scratch::first,
                                           sizeof(T) * static_cast<std::size_t>(shape.splits * weights)))
                 : dw;
    launch_gemm<T, Cfg>(shape, ErrorRows<T, Cfg>{dy, d}, InputRows<T, Cfg>{x, d},
                        StoreMatrix<T>{out, CRSg, d.Kg * CRSg, weights});
    if (shape.splits > 1) {
      sum_splits<T><<<grid_for(weights), kBlockThreads>>>(out, shape.splits, weights, dw);
      JUANJI_CUDA_CHECK_LAUNCH();
    }
  });
}

// db[k] = sum over (n, p, q) of dy[n, k, p, q], in double and in two fixed-order stages: blocks
// sum fixed chunks of a filter's elements (a block per filter would leave most of the GPU idle
// and wait out one load latency after another), then each filter's chunks are added in order.
constexpr index_t kBiasChunk = 4096;

template <class T>
__global__ void bias_grad_chunks(const T* dy, index_t N, index_t K, index_t PQ, index_t chunks,
                                 double* partials) {
  __shared__ double buffer[kBlockThreads];
  for (index_t item = blockIdx.x; item < K * chunks; item += gridDim.x) {
    const index_t k = div_nonneg(item, chunks), first = (item - k * chunks) * kBiasChunk;
    const index_t end = first + kBiasChunk < N * PQ ? first + kBiasChunk : N * PQ;
    double sum = 0;
#pragma unroll 4
    for (index_t e = first + threadIdx.x; e < end; e += kBlockThreads) {
      const index_t n = div_nonneg(e, PQ);
      sum += static_cast<double>(dy[(n * K + k) * PQ + (e - n * PQ)]);
    }
    sum = block_sum<kBlockThreads>(sum, buffer);
    if (threadIdx.x == 0) partials[item] = sum;
  }
}

template <class T>
__global__ void bias_grad_total(const double* partials, index_t K, index_t chunks, T* db) {
  for (index_t k = global_thread(); k < K; k += global_stride()) {
    double sum = 0;
    for (index_t c = 0; c < chunks; ++c) sum += partials[k * chunks + c];
    db[k] = static_cast<T>(sum);
  }
}

template <class T>
void bias_grad(const ConvDims& d, const T* dy, T* db, const Tensor& like) {
  const index_t chunks = std::max<index_t>(ceil_div(d.N * d.PQ, kBiasChunk), 1);
  double* partials = static_cast<double*>(
      scratch(like, Scratch::second, sizeof(double) * static_cast<std::size_t>(d.K * chunks)));
  bias_grad_chunks<T><<<blocks_for(d.K * chunks), kBlockThreads>>>(dy, d.N, d.K, d.PQ, chunks, partials);
  JUANJI_CUDA_CHECK_LAUNCH();
  bias_grad_total<T><<<grid_for(d.K), kBlockThreads>>>(partials, d.K, chunks, db);
  JUANJI_CUDA_CHECK_LAUNCH();
}

// The three tensors of a pass: `a` sets the device and dtype the others must share.
void check_conv(const char* op, const Tensor& a, const char* a_name, std::int64_t a_numel,
                const Tensor& b, const char* b_name, std::int64_t b_numel, const Tensor& c,
                const char* c_name, std::int64_t c_numel) {
  check_float(a, a_name);
  check_operand(a, op, a_name, a.device(), a.dtype(), a_numel);
  check_operand(b, op, b_name, a.device(), a.dtype(), b_numel);
  check_operand(c, op, c_name, a.device(), a.dtype(), c_numel);
}

}  // namespace

void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias,
                  Tensor& y, FusedActivation activation) {
  const char* op = "conv_forward";
  check_conv(op, x, "x", g.N * g.C * g.H * g.W, w, "weight", g.K * (g.C / g.groups) * g.R * g.S,
             y, "y", g.N * g.K * g.P * g.Q);
  if (bias.defined()) check_operand(bias, op, "bias", x.device(), x.dtype(), g.K);
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    forward<T>(dims_of(g), data_of<T>(x), data_of<T>(w), optional_data_of<T>(bias), data_of<T>(y),
               activation, x);
  });
}

void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x) {
  check_conv("conv_backward_data", grad_y, "grad_y", g.N * g.K * g.P * g.Q, w, "weight",
             g.K * (g.C / g.groups) * g.R * g.S, grad_x, "grad_x", g.N * g.C * g.H * g.W);
  use_device_of(grad_y);
  with_float_type(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    backward_data<T>(dims_of(g), data_of<T>(grad_y), data_of<T>(w), data_of<T>(grad_x), grad_y);
  });
}

void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x,
                          Tensor& grad_w, Tensor& grad_b) {
  const char* op = "conv_backward_weight";
  check_conv(op, grad_y, "grad_y", g.N * g.K * g.P * g.Q, x, "x", g.N * g.C * g.H * g.W,
             grad_w, "grad_w", g.K * (g.C / g.groups) * g.R * g.S);
  if (grad_b.defined()) check_operand(grad_b, op, "grad_b", x.device(), x.dtype(), g.K);
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const ConvDims d = dims_of(g);
    backward_weight<T>(d, data_of<T>(grad_y), data_of<T>(x), data_of<T>(grad_w), x);
    if (grad_b.defined()) bias_grad<T>(d, data_of<T>(grad_y), data_of<T>(grad_b), x);
  });
}

}  // namespace juanji::cuda
