// im2col (or implicit columns) + GEMM: every problem, float32 or float64, the last algorithm of
// each table before the reference.
#include <algorithm>

#include "cpu/conv/algorithms.hpp"
#include "cpu/gemm.hpp"
#include "cpu/vec_math.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

namespace {

// Output columns [begin, end) whose input column q*stride_w + w_shift lies inside [0, W).
std::pair<std::int64_t, std::int64_t> inside_columns(const ConvGeometry& g, std::int64_t w_shift) {
  std::int64_t begin = w_shift >= 0 ? 0 : (-w_shift + g.stride_w - 1) / g.stride_w;
  std::int64_t end = g.W - w_shift > 0 ? (g.W - w_shift + g.stride_w - 1) / g.stride_w : 0;
  begin = std::min(begin, g.Q);
  return {begin, std::clamp(end, begin, g.Q)};
}

template <class T>
void im2col(const ConvGeometry& g, const T* x, T* col, std::int64_t ld) {
  // x: one image's channels of one group (Cg, H, W); col: (Cg*R*S, P*Q) with row stride ld
  const std::int64_t Cg = g.C / g.groups;
  for (std::int64_t c = 0; c < Cg; ++c)
    for (std::int64_t r = 0; r < g.R; ++r)
      for (std::int64_t s = 0; s < g.S; ++s) {
        T* row = col + ((c * g.R + r) * g.S + s) * ld;
        const std::int64_t w_shift = s * g.dil_w - g.pad_left;
        const auto [q_begin, q_end] = inside_columns(g, w_shift);
        for (std::int64_t p = 0; p < g.P; ++p) {
          T* out = row + p * g.Q;
          const std::int64_t ih = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (ih < 0 || ih >= g.H) {
            std::fill(out, out + g.Q, T(0));
            continue;
          }
          // Pointers are formed for columns inside the row only: with a large dilation or padding
          // w_shift alone lies far outside it.
          const T* in = x + (c * g.H + ih) * g.W;
          std::fill(out, out + q_begin, T(0));
          if (g.stride_w == 1) {
            if (q_end > q_begin) std::copy(in + (q_begin + w_shift), in + (q_end + w_shift), out + q_begin);
          } else {
            for (std::int64_t q = q_begin; q < q_end; ++q) out[q] = in[q * g.stride_w + w_shift];
          }
          std::fill(out + q_end, out + g.Q, T(0));
        }
      }
}

template <class T>
void col2im(const ConvGeometry& g, const T* col, std::int64_t ld, T* x) {
  // Adds col (Cg*R*S, P*Q; row stride ld) back into one image's group channels x (Cg, H, W),
  // which it zeroes first.
  const std::int64_t Cg = g.C / g.groups;
  std::fill(x, x + Cg * g.H * g.W, T(0));
  for (std::int64_t c = 0; c < Cg; ++c)
    for (std::int64_t r = 0; r < g.R; ++r)
      for (std::int64_t s = 0; s < g.S; ++s) {
        const T* row = col + ((c * g.R + r) * g.S + s) * ld;
        const std::int64_t w_shift = s * g.dil_w - g.pad_left;
        const auto [q_begin, q_end] = inside_columns(g, w_shift);
        for (std::int64_t p = 0; p < g.P; ++p) {
          const std::int64_t ih = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (ih < 0 || ih >= g.H) continue;
          const T* in = row + p * g.Q;
          T* out = x + (c * g.H + ih) * g.W;  // columns by index: w_shift may lie outside the row
          for (std::int64_t q = q_begin; q < q_end; ++q) out[q * g.stride_w + w_shift] += in[q];
        }
      }
}

bool is_pointwise(const ConvGeometry& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_top == 0 &&
         g.pad_left == 0 && g.P == g.H && g.Q == g.W;
}

// Images per GEMM: small images are batched side by side along the GEMM's N dimension
// (columns n*PQ + pq) so that packing and tile edges are paid once per batch, not per image.
// A function of the shapes only: summation orders never depend on the thread count.
std::int64_t images_per_gemm(const ConvGeometry& g) {
  constexpr std::int64_t kTargetColumns = 2048;
  const std::int64_t PQ = g.P * g.Q;
  return std::clamp<std::int64_t>((kTargetColumns + PQ - 1) / PQ, 1, g.N);
}

// Runs body(first_image, images, threaded_gemm) over batches of `per_batch` images: batches in
// parallel when there are enough of them, otherwise one after another with threaded GEMMs.
// Either way each output has one writer.
template <class Body>
void for_each_batch(std::int64_t N, std::int64_t per_batch, Body body) {
  const std::int64_t batches = (N + per_batch - 1) / per_batch;
  const int threads = team_size();
  auto run = [&](std::int64_t b, bool threaded) {
    const std::int64_t first = b * per_batch;
    body(first, std::min(per_batch, N - first), threaded);
  };
  if (batches >= threads && threads > 1) {
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t b = 0; b < batches; ++b) errors.guard([&] { run(b, false); });
    errors.rethrow();
  } else {
    for (std::int64_t b = 0; b < batches; ++b) run(b, true);
  }
}

// Copies a batch of images' (rows, PQ) blocks into one (rows, images*PQ) matrix and back.
template <class T>
void gather_images(const T* src, std::int64_t image_stride, std::int64_t images, std::int64_t rows,
                   std::int64_t PQ, T* dst) {
  for (std::int64_t i = 0; i < images; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy(src + i * image_stride + r * PQ, src + i * image_stride + (r + 1) * PQ,
                dst + r * images * PQ + i * PQ);
}

template <class T>
void scatter_images(const T* src, std::int64_t images, std::int64_t rows, std::int64_t PQ, T* dst,
                    std::int64_t image_stride) {
  for (std::int64_t i = 0; i < images; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy(src + r * images * PQ + i * PQ, src + r * images * PQ + (i + 1) * PQ,
                dst + i * image_stride + r * PQ);
}

// The im2col matrix of a batch of images (one group): (Cg*R*S, images*PQ), or the input itself
// for a single image of a pointwise convolution.
template <class T>
const T* batch_columns(const ConvGeometry& g, const T* x, std::int64_t first, std::int64_t images,
                       std::int64_t grp, bool pointwise, T* col) {
  const std::int64_t Cg = g.C / g.groups, HW = g.H * g.W, PQ = g.P * g.Q;
  const T* xg = x + (first * g.C + grp * Cg) * HW;
  if (pointwise && images == 1) return xg;
  if (pointwise) {
    gather_images(xg, g.C * HW, images, Cg, PQ, col);
  } else {
    for (std::int64_t i = 0; i < images; ++i) im2col(g, xg + i * g.C * HW, col + i * PQ, images * PQ);
  }
  return col;
}

constexpr std::int64_t kImplicitMinColumnElements = std::int64_t{1} << 20;

// Writes the block [first_row, first_row + rows) x [first_col, first_col + cols) of the virtual
// im2col matrix of a batch of images (rows (c, r, s), columns image*P*Q + p*Q + q) straight from
// x to out[row * row_stride + col * col_stride]: what a materialised matrix would cost in a write
// and a re-read of C*R*S*P*Q values per image, packing does in one pass.
template <class T>
void pack_virtual_columns(const ConvGeometry& g, const T* x, std::int64_t first_row, std::int64_t rows,
                          std::int64_t first_col, std::int64_t cols, T* out, std::int64_t row_stride,
                          std::int64_t col_stride) {
  const std::int64_t PQ = g.P * g.Q, HW = g.H * g.W;
  for (std::int64_t kk = 0; kk < rows; ++kk) {
    const std::int64_t k = first_row + kk, c = k / (g.R * g.S), r = (k / g.S) % g.R, s = k % g.S;
    const std::int64_t w_shift = s * g.dil_w - g.pad_left;
    const auto [q_inside, q_outside] = inside_columns(g, w_shift);
    T* row = out + kk * row_stride;
    // Walk the block's columns one output row (fixed image and p) at a time.
    for (std::int64_t j = 0; j < cols;) {
      const std::int64_t column = first_col + j, image = column / PQ, pq = column % PQ;
      const std::int64_t p = pq / g.Q, q = pq % g.Q, run = std::min(cols - j, g.Q - q);
      T* dst = row + j * col_stride;
      j += run;
      const std::int64_t ih = p * g.stride_h - g.pad_top + r * g.dil_h;
      const std::int64_t begin = ih < 0 || ih >= g.H ? q + run : std::clamp(q_inside, q, q + run);
      const std::int64_t end = ih < 0 || ih >= g.H ? q + run : std::clamp(q_outside, begin, q + run);
      // The plane's pointer, and offsets into it: a row outside the image or a large shift would
      // make a pointer far outside the plane, which is undefined even unread.
      const T* plane = x + image * g.C * HW + c * HW;
      const std::int64_t offset = ih * g.W + w_shift;
      for (std::int64_t t = q; t < begin; ++t) dst[(t - q) * col_stride] = T(0);
      if (g.stride_w == 1 && col_stride == 1) {
        if (end > begin) std::copy(plane + (offset + begin), plane + (offset + end), dst + (begin - q));
      } else {
        for (std::int64_t t = begin; t < end; ++t) dst[(t - q) * col_stride] = plane[offset + t * g.stride_w];
      }
      for (std::int64_t t = end; t < q + run; ++t) dst[(t - q) * col_stride] = T(0);
    }
  }
}

// GEMM's B operand of the forward pass: rows (c, r, s), columns of the batch.
template <class T>
struct ImplicitColumns {
  const ConvGeometry& g;
  const T* x;  // the batch's first image, at its group's first channel

  void operator()(std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols, int nr, T* out) const {
    pack_virtual_columns(g, x, k0, kc, j0, cols, out, nr, 1);
    for (std::int64_t kk = 0; kk < kc; ++kk) std::fill(out + kk * nr + cols, out + (kk + 1) * nr, T(0));
  }
};

// GEMM's B operand of the weight gradient, the transpose: rows are columns of the batch,
// columns (c, r, s).
template <class T>
struct ImplicitColumnsTransposed {
  const ConvGeometry& g;
  const T* x;

  void operator()(std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols, int nr, T* out) const {
    pack_virtual_columns(g, x, j0, cols, k0, kc, out, 1, nr);
    for (std::int64_t kk = 0; kk < kc; ++kk) std::fill(out + kk * nr + cols, out + (kk + 1) * nr, T(0));
  }
};

}  // namespace

// im2col (or implicit columns) + GEMM: every problem, float32 or float64.
template <class T>
void gemm_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y, bool relu, std::int64_t y_image) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const std::int64_t PQ = g.P * g.Q, CRSg = Cg * g.R * g.S;
  const bool pointwise = is_pointwise(g);
  const std::int64_t per_batch = images_per_gemm(g);
  const std::int64_t out_image = y_image ? y_image : g.K * PQ;
  for_each_batch(g.N, per_batch, [&](std::int64_t first, std::int64_t images, bool threaded) {
    const std::int64_t cols = images * PQ;
    // Packing straight from x pays off once the im2col matrix outgrows the caches (measured:
    // +8% to +30% on res_64..res_256 and the stem); below that, im2col's long row copies win
    // (lenet_c2 and cifar_c2 ran 2x and 1.2x slower implicitly).
    const bool implicit = !pointwise && CRSg * cols > kImplicitMinColumnElements;
    T* col = implicit ? nullptr : cpu::workspace<T>(cpu::WorkspaceSlot::columns, CRSg * cols);
    T* out = images > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::batch_out, Kg * cols) : nullptr;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      T* yg = y + first * out_image + grp * Kg * PQ;
      T* c = images > 1 ? out : yg;
      // The bias is added to each finished sum, as the other algorithms add it.
      const cpu::GemmEpilogue<T> epilogue{bias ? bias + grp * Kg : nullptr, relu};
      const cpu::Matrix<T> weights{w + grp * Kg * CRSg, CRSg, 1};
      if (implicit) {
        const ImplicitColumns<T> columns{g, x + (first * g.C + grp * Cg) * g.H * g.W};
        cpu::gemm_with_packer<T>(Kg, cols, CRSg, weights, columns, c, cols, false, threaded, epilogue);
      } else {
        const T* columns = batch_columns(g, x, first, images, grp, pointwise, col);
        cpu::gemm<T>(Kg, cols, CRSg, weights, {columns, cols, 1}, c, cols, false, threaded, epilogue);
      }
      if (images > 1) scatter_images(out, images, Kg, PQ, yg, out_image);
    }
  });
}

// A pointwise layer's data gradient is a GEMM straight into dx per image. It beats the filter
// blocks where an image's gradient outgrows L2 and there are 64+ error channels to sum (data +
// weight gradient, ms: 8x256x56x56 -> 64 10.5 -> 9.4, 4x128x56x56 -> 64 2.41 -> 2.30, 2x512x56x56
// -> 128 9.0 -> 8.3), not below either (8x256x28x28 -> 64: 2.28 -> 3.0; 4x256x64x64 -> 32: 3.8 -> 4.1).
bool pointwise_data_grad_by_gemm(const ConvGeometry& g) {
  return is_pointwise(g) && g.K / g.groups >= 64 &&
         g.C / g.groups * g.H * g.W * std::int64_t{sizeof(float)} > kL2Bytes;
}

// A pointwise layer's forward is a GEMM straight from x, one image per GEMM where an image has
// 2048+ pixels, and the images' GEMMs share out among the threads. Since the filter blocks pair
// their jobs and fetch ahead, the GEMM wins only where a layer widens few channels into more
// filters on large planes, in batches (2 threads, us, GEMM against filter blocks: 4x96x56x56 ->
// 384 3531 against 4270, 8x64x56x56 -> 256 3003 against 3329); the filter blocks take the rest,
// narrowing layers most of all (8x256x56x56 -> 64: 3045 against 4436, 1x256x14x14 -> 1024: 375
// against 492) and layers as wide out as in (8x128x56x56 -> 128: 3598 against 3534). A single
// image's widening layers, 3-7% faster by GEMM timed alone, are faster by the filter blocks in a
// model, their input fresh from the layer before (SqueezeNet's 1x16x55x55 -> 64: 0.12 against
// 0.075 ms; ResNet-50's 1x64x56x56 -> 256: 0.60-0.68 against 0.56-0.61).
bool pointwise_forward_by_gemm(const ConvGeometry& g) {
  if (!is_pointwise(g)) return false;
  const std::int64_t pixels = g.P * g.Q, channels = g.C / g.groups, filters = g.K / g.groups;
  return g.N >= 2 && pixels >= 2048 && filters > channels && channels <= 256;
}

// GEMM + col2im: every problem, float32 or float64.
template <class T>
void gemm_backward_data(const ConvGeometry& g, const T* dy, const T* w, T* dx) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const std::int64_t HW = g.H * g.W, PQ = g.P * g.Q, CRSg = Cg * g.R * g.S;
  const bool pointwise = is_pointwise(g);
  const std::int64_t per_batch = images_per_gemm(g);
  for_each_batch(g.N, per_batch, [&](std::int64_t first, std::int64_t images, bool threaded) {
    const std::int64_t cols = images * PQ;
    T* col = cpu::workspace<T>(cpu::WorkspaceSlot::columns, CRSg * cols);
    T* grads = images > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::batch_out, Kg * cols) : nullptr;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      const T* dyg = dy + (first * g.K + grp * Kg) * PQ;
      T* dxg = dx + (first * g.C + grp * Cg) * HW;
      if (images > 1) gather_images(dyg, g.K * PQ, images, Kg, PQ, grads);
      const bool direct = pointwise && images == 1;
      cpu::gemm<T>(CRSg, cols, Kg, {w + grp * Kg * CRSg, 1, CRSg}, {images > 1 ? grads : dyg, cols, 1},
                   direct ? dxg : col, cols, false, threaded);
      if (direct) continue;
      if (pointwise) {
        scatter_images(col, images, Cg, PQ, dxg, g.C * HW);
      } else {
        for (std::int64_t i = 0; i < images; ++i) col2im(g, col + i * PQ, cols, dxg + i * g.C * HW);
      }
    }
  });
}

template <class T>
void bias_grad(const ConvGeometry& g, const T* dy, T* db) {
  const std::int64_t PQ = g.P * g.Q;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
  for (std::int64_t k = 0; k < g.K; ++k) {
    double sum = 0;
    for (std::int64_t n = 0; n < g.N; ++n) {
      const T* row = dy + (n * g.K + k) * PQ;
      sum += cpu::sum_elements(row, PQ);
    }
    db[k] = static_cast<T>(sum);
  }
}

// The bias gradient's own pass, then im2col (or implicit columns) + GEMM: every problem.
template <class T>
void gemm_backward_weight(const ConvGeometry& g, const T* dy, const T* x, T* dw, T* db) {
  if (db) bias_grad(g, dy, db);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const std::int64_t PQ = g.P * g.Q, CRSg = Cg * g.R * g.S;
  const std::int64_t weights = g.K * CRSg;
  const bool pointwise = is_pointwise(g);
  const std::int64_t per_batch = images_per_gemm(g);
  // A fixed number of image chunks (independent of the thread count) each sum their images'
  // contributions, batch by batch; the chunk partials are then added in chunk order.
  const std::int64_t chunks = std::min<std::int64_t>(g.N, 8);
  T* partials = chunks > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::partials, chunks * weights) : dw;
  auto run_chunk = [&](std::int64_t chunk, bool threaded) {
    T* out = chunks > 1 ? partials + chunk * weights : dw;
    const std::int64_t n_begin = g.N * chunk / chunks, n_end = g.N * (chunk + 1) / chunks;
    for (std::int64_t first = n_begin; first < n_end; first += per_batch) {
      const std::int64_t images = std::min(per_batch, n_end - first), cols = images * PQ;
      // Transposed implicit packing scatters its writes; it beats im2col only where im2col's own
      // gather is strided (measured: stem 86 -> 120 GF/s, but res_128 139 -> 123).
      const bool implicit = g.stride_w > 1 && CRSg * cols > kImplicitMinColumnElements;
      T* col = implicit ? nullptr : cpu::workspace<T>(cpu::WorkspaceSlot::columns, CRSg * cols);
      T* grads = images > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::batch_out, Kg * cols) : nullptr;
      for (std::int64_t grp = 0; grp < g.groups; ++grp) {
        const T* dyg = dy + (first * g.K + grp * Kg) * PQ;
        if (images > 1) gather_images(dyg, g.K * PQ, images, Kg, PQ, grads);
        const cpu::Matrix<T> errors{images > 1 ? grads : dyg, cols, 1};
        T* dwg = out + grp * Kg * CRSg;
        if (implicit) {
          const ImplicitColumnsTransposed<T> columns{g, x + (first * g.C + grp * Cg) * g.H * g.W};
          cpu::gemm_with_packer<T>(Kg, CRSg, cols, errors, columns, dwg, CRSg, first > n_begin, threaded);
        } else {
          const T* columns = batch_columns(g, x, first, images, grp, pointwise, col);
          cpu::gemm<T>(Kg, CRSg, cols, errors, {columns, 1, cols}, dwg, CRSg, first > n_begin, threaded);
        }
      }
    }
  };
  if (chunks > 1) {
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
    for (std::int64_t c = 0; c < chunks; ++c) errors.guard([&] { run_chunk(c, false); });
    errors.rethrow();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
    for (std::int64_t i = 0; i < weights; ++i) {
      T sum = partials[i];
      for (std::int64_t c = 1; c < chunks; ++c) sum += partials[c * weights + i];
      dw[i] = sum;
    }
  } else {
    run_chunk(0, true);
  }
}

template void gemm_forward<float>(const ConvGeometry&, const float*, const float*, const float*, float*, bool,
                                  std::int64_t);
template void gemm_forward<double>(const ConvGeometry&, const double*, const double*, const double*, double*, bool,
                                   std::int64_t);
template void gemm_backward_data<float>(const ConvGeometry&, const float*, const float*, float*);
template void gemm_backward_data<double>(const ConvGeometry&, const double*, const double*, double*);
template void gemm_backward_weight<float>(const ConvGeometry&, const float*, const float*, float*, float*);
template void gemm_backward_weight<double>(const ConvGeometry&, const double*, const double*, double*, double*);
template void bias_grad<float>(const ConvGeometry&, const float*, float*);
template void bias_grad<double>(const ConvGeometry&, const double*, double*);

}  // namespace juanji::cpu::conv
