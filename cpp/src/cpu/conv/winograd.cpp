// Winograd F(2x2, 3x3) for stride-1 3x3 layers: forward, data and weight gradients.
#include <algorithm>
#include <vector>

#include "cpu/conv/filter_blocks.hpp"
#include "cpu/vec_math.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

// Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"): each
// 2x2 block of outputs (a tile) of a stride-1 3x3 correlation is A^T [sum_c U_kc . V_c] A, with
// U_kc = G g_kc G^T the transformed filter, V_c = B^T d_c B the transformed 4x4 input patch and
// . the elementwise product: 16 multiplies per channel and tile where the definition takes 36.
// G's entries are 0, 1 and 1/2: integer-valued weights give multiples of 1/4, integer inputs
// integer V, so integer-valued data stays exact (and equal to the direct sum). Rounding differs
// from the direct sum's otherwise (its error bound is a small multiple of the direct one); an
// infinite input can turn an output that the definition makes infinite into NaN.
constexpr std::int64_t kWinogradMinChannels = 16;
// A chunk's transformed input (16 x channels x tiles floats) stays within half of a 1 MiB L2.
constexpr std::int64_t kWinogradChunkFloats = std::int64_t{1} << 17;
constexpr std::int64_t kWinogradMaxChunkTiles = 128;

// The 16 products cost a third of the direct sum's multiply-adds but the transforms read and
// write every input and output again: it pays off from 16 channels in and out per group.
bool use_winograd(const Correlation& c) {
  return winograd_enabled() && c.R == 3 && c.S == 3 && c.stride_h == 1 && c.stride_w == 1 && c.dil_h == 1 && c.dil_w == 1 &&
         c.in_per_group() >= kWinogradMinChannels && c.out_per_group() >= kWinogradMinChannels;
}

namespace {

// G x, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], for the 16 lanes of three rows x0, x1, x2:
// row k at out + k * out_step.
void times_g(const float* x0, const float* x1, const float* x2, float* out, std::int64_t out_step) {
  for (std::int64_t lane = 0; lane < cpu::kFilterBlock; ++lane) {
    const float a = x0[lane], b = x1[lane], c = x2[lane];
    out[lane] = a;
    out[out_step + lane] = (a + b + c) * 0.5f;
    out[2 * out_step + lane] = (a - b + c) * 0.5f;
    out[3 * out_step + lane] = c;
  }
}

// Transformed filters as (group, block, e, channel, 16 filters): u[e][c][k] = (G g G^T)[e / 4][e % 4]
// for the 3x3 kernel g = kernel(grp, filter, channel), rotated by 180 degrees if asked; kept in
// packs where given.
template <class Kernel>
const float* pack_winograd_filters(const Correlation& c, bool rotate, Kernel kernel, PackedWeights* packs = nullptr) {
  const std::int64_t in = c.in_per_group(), per_group = c.out_per_group();
  return pack_filter_blocks(c, 16 * in * cpu::kFilterBlock, [&](std::int64_t grp, std::int64_t kb, float* out) {
    const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, per_group - kb * cpu::kFilterBlock);
    // The block's 16 filters side by side (lanes past its last filter zero), each value made as a
    // filter alone would make it: loops over the lanes the compiler vectorizes (a 128x128 layer's
    // filters took 0.19 ms filter by filter).
    constexpr std::int64_t L = cpu::kFilterBlock;
    for (std::int64_t ch = 0; ch < in; ++ch) {
      float g[9][L] = {};  // (tap, filter): the kernels, rotated if asked
      for (std::int64_t lane = 0; lane < filters; ++lane) {
        const float* taps = kernel(grp, kb * L + lane, ch);
        for (int t = 0; t < 9; ++t) g[t][lane] = taps[rotate ? 8 - t : t];
      }
      float gg[4][3][L];  // G g: column s of g times G, into gg[.][s]
      for (int s = 0; s < 3; ++s) times_g(g[s], g[3 + s], g[6 + s], gg[0][s], 3 * L);
      // (G g) G^T: row a of G g times G, into rows e = 4a + b of out.
      for (int a = 0; a < 4; ++a) times_g(gg[a][0], gg[a][1], gg[a][2], out + (4 * a * in + ch) * L, in * L);
    }
  }, packs, "winograd");
}

// The tiles of a correlation's output, numbered image by image, row by row.
struct WinogradTiles {
  std::int64_t h, w, total;
  std::int64_t used_h, used_w;  // input rows and columns some output reads (the rest stays zero)

  explicit WinogradTiles(const Correlation& c)
      : h((c.out_h + 1) / 2), w((c.out_w + 1) / 2), total(c.N * h * w),
        used_h(std::min(c.in_h, c.out_h + 2 - c.pad_top)), used_w(std::min(c.in_w, c.out_w + 2 - c.pad_left)) {}

  // Tile rows that one image's part of `tiles` consecutive tiles spans at most.
  std::int64_t tile_rows_for(std::int64_t tiles) const { return std::min(h, (tiles + w - 1) / w + 1); }
};

// Calls fn(n, ty, tx_begin, tx_end, offset) for each run of tiles of one tile row among the tiles
// [begin, end); offset counts from begin.
template <class Fn>
void for_each_tile_run(const WinogradTiles& tiles, std::int64_t begin, std::int64_t end, Fn fn) {
  // Divisions for the first tile only: the error transforms call this per block of filters, and
  // three divisions per run cost as much as a short run's transforms.
  std::int64_t n = begin / (tiles.h * tiles.w), ty = begin / tiles.w % tiles.h, tx = begin % tiles.w;
  for (std::int64_t t = begin; t < end;) {
    const std::int64_t run = std::min(tiles.w - tx, end - t);
    fn(n, ty, tx, tx + run, t - begin);
    t += run;
    tx = 0;
    if (++ty == tiles.h) {
      ty = 0;
      ++n;
    }
  }
}

// for_each_tile_run with start_image(n, first_row, last_row) called before each image's first run
// (its tile rows [first_row, last_row] hold the image's tiles among [begin, end)) and fn given the
// tile row counted from first_row.
template <class StartImage, class Fn>
void for_each_tile_run_by_image(const WinogradTiles& tiles, std::int64_t begin, std::int64_t end,
                                StartImage start_image, Fn fn) {
  std::int64_t image = -1, first_row = 0;
  for_each_tile_run(tiles, begin, end, [&](std::int64_t n, std::int64_t ty, std::int64_t tx0, std::int64_t tx1,
                                           std::int64_t offset) {
    if (n != image) {
      image = n;
      first_row = ty;
      start_image(n, ty, std::min(tiles.h - 1, (end - 1 - n * tiles.h * tiles.w) / tiles.w));
    }
    fn(ty - first_row, tx0, tx1, offset);
  });
}

// Input transforms of the channels [ch_begin, ch_end) (of group grp) for the tiles [begin, end),
// the transforms' rows [first_row, end_row) (WinogradInputRow): channel ch's at
// v[e * v_stride + ch * v_row + t - begin]. The kernels read each image's planes where they lie,
// the padding and the rows and columns no output reads (tiles.used_h, tiles.used_w: a NaN there
// stays out of the sums) as zeros, a run of tiles of all the channels a call. (Copied into a
// zero-padded buffer first, channel after channel and a call per row, the planes took 40% of the
// transforms' time for 128 channels of 4x4, each row's copy waiting on L3.)
void winograd_input_chunk(const Correlation& c, const WinogradTiles& tiles, const float* src, std::int64_t grp,
                          std::int64_t ch_begin, std::int64_t ch_end, std::int64_t begin, std::int64_t end, float* v,
                          std::int64_t v_row, std::int64_t v_stride, int first_row = 0, int end_row = 4) {
  if (ch_begin >= ch_end) return;
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t plane = c.in_h * c.in_w;
  float* const channels_v = v + ch_begin * v_row;
  // The inputs of the run of tile row ty of image n from column tx0 on.
  auto inputs = [&](std::int64_t n, std::int64_t ty, std::int64_t tx0) {
    return cpu::WinogradInputRows{src + (n * c.in_channels + grp * c.in_per_group() + ch_begin) * plane,
                                  c.in_w,
                                  tiles.used_h,
                                  tiles.used_w,
                                  2 * ty - c.pad_top,
                                  2 * tx0 - c.pad_left,
                                  ch_end - ch_begin,
                                  plane};
  };
  // Rows of at most half a vector of tiles go two by two (convnet_c2's 7-tile rows: its forward
  // 5-7% faster on one core): a full row waits for the next.
  const bool pairs = 2 * tiles.w <= kernels.direct_conv_lanes;
  std::int64_t waiting_image = -1, waiting_row = 0, waiting_offset = 0;
  auto flush = [&] {
    if (waiting_image < 0) return;
    kernels.winograd_input_row_f32(inputs(waiting_image, waiting_row, 0), tiles.w, channels_v + waiting_offset, v_row,
                                   v_stride, first_row, end_row);
    waiting_image = -1;
  };
  for_each_tile_run(tiles, begin, end, [&](std::int64_t n, std::int64_t ty, std::int64_t tx0, std::int64_t tx1,
                                           std::int64_t offset) {
    const bool full = tx0 == 0 && tx1 == tiles.w;
    if (pairs && full && waiting_image == n && waiting_row + 1 == ty) {
      kernels.winograd_input_row_pair_f32(inputs(n, waiting_row, 0), tiles.w, channels_v + waiting_offset, v_row,
                                          v_stride, first_row, end_row);
      waiting_image = -1;
      return;
    }
    flush();
    if (pairs && full) {
      waiting_image = n, waiting_row = ty, waiting_offset = offset;
      return;
    }
    kernels.winograd_input_row_f32(inputs(n, ty, tx0), tx1 - tx0, channels_v + offset, v_row, v_stride, first_row,
                                   end_row);
  });
  flush();
}

// out = correlation of src with the transformed filters (+ bias, then ReLU if asked). A job takes
// a chunk of the batch's tiles in one group: it transforms the chunk's input once, then per block
// of 16 filters sums the products and transforms them back. Every output is written by one job,
// and its value does not depend on the chunking.
void winograd_correlate(const Correlation& c, const float* src, const float* packed, const float* bias,
                        float* out, std::int64_t out_image, bool relu) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t in = c.in_per_group(), per_group = c.out_per_group(), blocks = c.blocks();
  const WinogradTiles all(c);
  // Chunks as many as a multiple of the thread count, their bounds on whole 16-tile blocks.
  const std::int64_t wanted = std::clamp<std::int64_t>(kWinogradChunkFloats / (16 * in), 16, kWinogradMaxChunkTiles);
  const std::int64_t threads = team_size();
  const std::int64_t chunks = ((all.total + wanted - 1) / wanted + threads - 1) / threads * threads;
  auto chunk_bound = [&](std::int64_t i) {
    return i == chunks ? all.total : std::min(all.total, (all.total * i / chunks + 8) / 16 * 16);
  };
  const std::int64_t out_plane = c.out_h * c.out_w;
  const FilterBlockJobs jobs(c.groups * chunks, blocks);
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs.count() > 1)
  for (std::int64_t job = 0; job < jobs.count(); ++job) errors.guard([&] {
    const std::int64_t grp = jobs.outer_of(job) / chunks, chunk = jobs.outer_of(job) % chunks;
    const std::int64_t begin = chunk_bound(chunk), end = chunk_bound(chunk + 1), tiles = end - begin;
    if (tiles == 0) return;
    // A channel's transforms followed by room for the 15 floats a run's last vector may write past
    // them: the runs of all channels are made together, so the next channel's are already there.
    const std::int64_t v_row = tiles + 16, v_stride = in * v_row + 16, m_stride = tiles * cpu::kFilterBlock + 16;
    float* v = cpu::workspace<float>(cpu::WorkspaceSlot::columns, 16 * v_stride);
    winograd_input_chunk(c, all, src, grp, 0, in, begin, end, v, v_row, v_stride);
    // kBlocksAtOnce blocks of filters' products at a time.
    const std::int64_t m_block = 16 * m_stride, u_block = 16 * in * cpu::kFilterBlock;
    float* m = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, kBlocksAtOnce * m_block);
    // Where each run of the chunk's tiles goes in filter 0's plane, the same for every block.
    std::vector<cpu::WinogradOutputRun> runs;
    for_each_tile_run(all, begin, end, [&](std::int64_t n, std::int64_t ty, std::int64_t tx0, std::int64_t tx1,
                                           std::int64_t) {
      runs.push_back({n * out_image + 2 * ty * c.out_w + 2 * tx0, tx1 - tx0, std::min<std::int64_t>(2, c.out_h - 2 * ty),
                      std::min(2 * tx1, c.out_w) - 2 * tx0});
    });
    for (std::int64_t kb0 = jobs.first_block(job); kb0 < jobs.end_block(job); kb0 += kBlocksAtOnce) {
      const std::int64_t now = std::min(kBlocksAtOnce, jobs.end_block(job) - kb0);
      kernels.winograd_products_f32({packed + (grp * blocks + kb0) * u_block, v, in, tiles, v_row, v_stride, m, m_stride,
                                     now, u_block, m_block});
      for (std::int64_t kb = kb0; kb < kb0 + now; ++kb) {
        const std::int64_t first = grp * per_group + kb * cpu::kFilterBlock;
        const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, per_group - kb * cpu::kFilterBlock);
        const float* block_m = m + (kb - kb0) * m_block;
        float block_bias[cpu::kFilterBlock] = {};
        if (bias) std::copy(bias + first, bias + first + filters, block_bias);
        kernels.winograd_output_f32({block_m, m_stride, runs.data(), std::int64_t(runs.size()), block_bias, relu,
                                     out + first * out_plane, filters, out_plane, c.out_w});
      }
    }
  });
  errors.rethrow();
}

}  // namespace

void winograd_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool relu,
                      PackedWeights* packs, std::int64_t y_image) {
  const Correlation c = forward_correlation(g);
  const std::int64_t Cg = c.in_per_group(), Kg = c.out_per_group();
  const float* packed = pack_winograd_filters(c, false, [&](std::int64_t grp, std::int64_t k, std::int64_t ch) {
    return w + ((grp * Kg + k) * Cg + ch) * 9;
  }, packs);
  winograd_correlate(c, x, packed, bias, y, y_image, relu);
}

// dx is the correlation of the padded error with the rotated, transposed kernel.
void winograd_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const Correlation c = data_grad_correlation(g);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const float* packed = pack_winograd_filters(c, true, [&](std::int64_t grp, std::int64_t ch, std::int64_t k) {
    return w + ((grp * Kg + k) * Cg + ch) * 9;
  });
  winograd_correlate(c, dy, packed, nullptr, dx, c.out_channels * c.out_h * c.out_w, false);
}

namespace {

// The weight gradient of the same tiles: dW_kc = G^T [sum_tiles (A dy A^T) . V_c] G, dy being a
// tile's 2x2 output gradient (zero past the output's edge). The sums over tiles run in chunks of
// the batch fixed by the shape, each added in order to the transformed gradient: a result of the
// shape alone. Integer-valued data stays exact (the 1/2s of G^T apply to integer sums). A NaN or
// infinity in x or dy reaches all 9 taps of the filters whose tiles it lies in. db (or null) gets
// the bias gradient as filter_block_backward_weight sums it: each error plane summed when its
// image's first rows are read.

// One group's buffers for chunks of at most max_chunk tiles: v[e][c][t], z[e][block][t][k] and
// du[e][block][c][k], the transformed gradient.
struct WinogradGradLayout {
  std::int64_t in, per_group, blocks, chunks, max_chunk;
  std::int64_t v_row, v_stride, z_block, z_stride, du_block, du_stride;
  // Pixels per row of a block's pixel-major gradient, and its rows for one image in a chunk.
  std::int64_t error_row, error_rows;

  WinogradGradLayout(const Correlation& c, const WinogradTiles& all, std::int64_t chunk_tiles)
      : in(c.in_per_group()), per_group(c.out_per_group()), blocks(c.blocks()),
        chunks((all.total + chunk_tiles - 1) / chunk_tiles), max_chunk((all.total + chunks - 1) / chunks),
        v_row(max_chunk + 16), v_stride(in * v_row + 16), z_block(max_chunk * cpu::kFilterBlock),
        z_stride(blocks * z_block + 16), du_block(in * cpu::kFilterBlock), du_stride(blocks * du_block),
        error_row(2 * all.w), error_rows(2 * all.tile_rows_for(max_chunk)) {}

  std::int64_t chunk_begin(const WinogradTiles& all, std::int64_t chunk) const { return all.total * chunk / chunks; }
  std::int64_t errors_size() const { return error_rows * error_row * cpu::kFilterBlock; }
};

// The error transforms of block kb over the tiles [begin, end), rows [first_row, end_row) of
// them (WinogradGradRow), into z: each image's part of the chunk has its block's gradient rows
// made pixel-major in `errors` (zero past the output's edge and the group's last filter), then
// transformed run by run. With plane_sums, the block's error planes of the images whose first
// tile the chunk holds are summed into it.
void winograd_grad_block(const ConvGeometry& g, const WinogradTiles& all, const WinogradGradLayout& l,
                         const float* dy, std::int64_t grp, std::int64_t kb, std::int64_t begin, std::int64_t end,
                         int first_row, int end_row, float* errors, float* z, double* plane_sums) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, l.per_group - kb * cpu::kFilterBlock);
  auto fill_errors = [&](std::int64_t n, std::int64_t first_tile_row, std::int64_t last_tile_row) {
    const std::int64_t first_filter = n * g.K + grp * l.per_group + kb * cpu::kFilterBlock;
    const float* planes = dy + first_filter * g.P * g.Q;
    if (plane_sums && n * all.h * all.w >= begin)
      for (std::int64_t f = 0; f < filters; ++f)
        plane_sums[first_filter + f] = cpu::sum_elements(planes + f * g.P * g.Q, g.P * g.Q);
    const std::int64_t first_row = 2 * first_tile_row, end_row = 2 * last_tile_row + 2, rows = std::min(end_row, g.P);
    // Rows as wide as the error's follow each other in both: one long row (a 4x4 error's four
    // rows in one transpose, not four transposes of a quarter each).
    if (l.error_row == g.Q) {
      kernels.pixel_major_row_f32(planes + first_row * g.Q, g.P * g.Q, filters, (rows - first_row) * g.Q,
                                  (rows - first_row) * g.Q, errors);
    } else {
      for (std::int64_t p = first_row; p < rows; ++p)
        kernels.pixel_major_row_f32(planes + p * g.Q, g.P * g.Q, filters, g.Q, l.error_row,
                                    errors + (p - first_row) * l.error_row * cpu::kFilterBlock);
    }
    std::fill(errors + (rows - first_row) * l.error_row * cpu::kFilterBlock,
              errors + (end_row - first_row) * l.error_row * cpu::kFilterBlock, 0.0f);
  };
  for_each_tile_run_by_image(all, begin, end, fill_errors, [&](std::int64_t row, std::int64_t tx0, std::int64_t tx1,
                                                               std::int64_t offset) {
    kernels.winograd_grad_row_f32(errors + (2 * row * l.error_row + 2 * tx0) * cpu::kFilterBlock, l.error_row, tx1 - tx0,
                                  z + kb * l.z_block + offset * cpu::kFilterBlock, l.z_stride, first_row, end_row);
  });
}

// dW = G^T dU G for one group, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1], and db from the
// plane sums (or no db).
void winograd_weight_from_transformed(const ConvGeometry& g, const WinogradGradLayout& l, std::int64_t grp,
                                      const float* du, const double* plane_sums, float* dw, float* db) {
  if (db) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) \
    if (g.N * l.per_group >= cpu::kParallelGrain)
    for (std::int64_t k = 0; k < l.per_group; ++k) {
      double bias = 0;
      for (std::int64_t n = 0; n < g.N; ++n) bias += plane_sums[n * g.K + grp * l.per_group + k];
      db[grp * l.per_group + k] = static_cast<float>(bias);
    }
  }
  // A block's 16 filters side by side, as du holds them, each value made as a filter alone would
  // make it: loops over the lanes the compiler vectorizes (a 128x128 layer's took 0.18 ms filter
  // by filter).
  constexpr std::int64_t L = cpu::kFilterBlock;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
  for (std::int64_t job = 0; job < l.blocks * l.in; ++job) {
    const std::int64_t kb = job / l.in, ch = job % l.in;
    const float* m = du + kb * l.du_block + ch * L;
    float s[3][4][L];
    for (int b = 0; b < 4; ++b)
      for (std::int64_t lane = 0; lane < L; ++lane) {
        const float m0 = m[b * l.du_stride + lane], m1 = m[(4 + b) * l.du_stride + lane],
                    m2 = m[(8 + b) * l.du_stride + lane], m3 = m[(12 + b) * l.du_stride + lane];
        s[0][b][lane] = m0 + (m1 + m2) * 0.5f;
        s[1][b][lane] = (m1 - m2) * 0.5f;
        s[2][b][lane] = (m1 + m2) * 0.5f + m3;
      }
    float taps[9][L];
    for (int r = 0; r < 3; ++r)
      for (std::int64_t lane = 0; lane < L; ++lane) {
        taps[3 * r][lane] = s[r][0][lane] + (s[r][1][lane] + s[r][2][lane]) * 0.5f;
        taps[3 * r + 1][lane] = (s[r][1][lane] - s[r][2][lane]) * 0.5f;
        taps[3 * r + 2][lane] = (s[r][1][lane] + s[r][2][lane]) * 0.5f + s[r][3][lane];
      }
    const std::int64_t filters = std::min(L, l.per_group - kb * L);
    for (std::int64_t lane = 0; lane < filters; ++lane) {
      float* out = dw + ((grp * l.per_group + kb * L + lane) * l.in + ch) * 9;
      for (int t = 0; t < 9; ++t) out[t] = taps[t][lane];
    }
  }
}

// Few channels: the cells (e, block of 16 filters) of the transformed gradient are shared out as
// jobs (the top or bottom half of the e = 4a + b, block), each thread taking a run of them. With
// two threads each makes the input and error transforms of its half only, chunk after chunk, and
// sums its own products, without a barrier; chunks of kWinogradGradMinHalfChunk+ tiles keep a
// thread's half of the transforms in L2. Both threads pad the input and make the error
// pixel-major: longer chunks repay that (cifar_c2's backward 4.9 -> 4.3 ms; res_64, 192-tile
// chunks, ran 4% slower than through L3).
constexpr std::int64_t kWinogradGradL2Bytes = std::int64_t{768} << 10;
constexpr std::int64_t kWinogradGradMinHalfChunk = 256;

std::int64_t winograd_half_chunk_tiles(const Correlation& c) {
  const std::int64_t half_tile_bytes = 8 * std::int64_t{sizeof(float)} * (c.in_per_group() + c.blocks() * cpu::kFilterBlock);
  return kWinogradGradL2Bytes / half_tile_bytes / 16 * 16;
}

void winograd_weight_grad_by_halves(const ConvGeometry& g, const Correlation& c, const float* dy, const float* x,
                                    float* dw, float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const WinogradTiles all(c);
  const WinogradGradLayout l(c, all, winograd_half_chunk_tiles(c));
  float* du = cpu::workspace<float>(cpu::WorkspaceSlot::partials, 16 * l.du_stride);
  double* plane_sums = db ? cpu::workspace<double>(cpu::WorkspaceSlot::plane_sums, g.N * g.K) : nullptr;
  const std::int64_t jobs = 2 * l.blocks;  // job = half * blocks + block
  const std::int64_t parts = std::min<std::int64_t>(jobs, team_size());
  for (std::int64_t grp = 0; grp < g.groups; ++grp) {
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parts > 1)
    for (std::int64_t part = 0; part < parts; ++part) errors.guard([&] {
      const std::int64_t first_job = jobs * part / parts, end_job = jobs * (part + 1) / parts;
      float* v = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_a, 16 * l.v_stride);
      float* z = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_b, 16 * l.z_stride);
      float* errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, l.errors_size());
      const int first_row = first_job < l.blocks ? 0 : 2, end_row = end_job > l.blocks ? 4 : 2;
      for (std::int64_t chunk = 0; chunk < l.chunks; ++chunk) {
        const std::int64_t begin = l.chunk_begin(all, chunk), end = l.chunk_begin(all, chunk + 1);
        winograd_input_chunk(c, all, x, grp, 0, l.in, begin, end, v, l.v_row, l.v_stride, first_row, end_row);
        // Block kb's rows of e (0-2 the top half's, 2-4 the bottom's) in this part; none: {0, 0}.
        const auto rows_of = [&](std::int64_t kb) {
          const bool top = first_job <= kb && kb < end_job, bottom = first_job <= l.blocks + kb && l.blocks + kb < end_job;
          return top || bottom ? std::pair<int, int>{top ? 0 : 2, bottom ? 4 : 2} : std::pair<int, int>{0, 0};
        };
        for (std::int64_t kb = 0; kb < l.blocks;) {
          const auto [block_first_row, block_end_row] = rows_of(kb);
          if (block_first_row == block_end_row) {
            ++kb;
            continue;
          }
          // With the next blocks that have the same rows here: their products go together.
          std::int64_t together = 1;
          while (together < kBlocksAtOnce && kb + together < l.blocks && rows_of(kb + together) == rows_of(kb))
            ++together;
          for (std::int64_t b = kb; b < kb + together; ++b)
            winograd_grad_block(g, all, l, dy, grp, b, begin, end, block_first_row, block_end_row, errors, z,
                                block_first_row == 0 ? plane_sums : nullptr);
          for (std::int64_t e = 4 * block_first_row; e < 4 * block_end_row; ++e)
            kernels.winograd_weight_products_f32({z + e * l.z_stride + kb * l.z_block, v + e * l.v_stride, end - begin,
                                                  l.v_row, l.in, du + e * l.du_stride + kb * l.du_block, chunk > 0,
                                                  together, l.z_block, l.du_block});
          kb += together;
        }
      }
    });
    errors.rethrow();
    winograd_weight_from_transformed(g, l, grp, du, plane_sums, dw, db);
  }
}

// More channels: each chunk's transforms are shared out by channel and block, then its products
// by (e, block), through chunks that stay in the last-level cache and are long enough to pay for
// adding their sums into the gradient and for the barrier each takes. Chunks of 2 MiB (and at
// least 128 tiles) keep the workspace small: the ResNet step's went 28 -> 12 MB at the same speed
// on the AVX2 machine (81-84 ms), where on the AVX-512 machine chunks of 1-2 MiB had run 10-20%
// slower than of 8.
constexpr std::int64_t kWinogradGradChunkBytes = std::int64_t{2} << 20;
constexpr std::int64_t kWinogradGradMinChunk = 128;

void winograd_weight_grad_shared(const ConvGeometry& g, const Correlation& c, const float* dy, const float* x,
                                 float* dw, float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const WinogradTiles all(c);
  const std::int64_t bytes_per_tile = 64 * (c.in_per_group() + c.blocks() * cpu::kFilterBlock);
  const WinogradGradLayout l(c, all, std::max(kWinogradGradMinChunk, kWinogradGradChunkBytes / bytes_per_tile));
  // Two buffers of transforms: a chunk's are made while the previous chunk's products may still
  // run, so each chunk costs one barrier (the one after its transforms), not three.
  float* v_buffers = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_a, 2 * 16 * l.v_stride);
  float* z_buffers = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_b, 2 * 16 * l.z_stride);
  float* du = cpu::workspace<float>(cpu::WorkspaceSlot::partials, 16 * l.du_stride);
  double* plane_sums = db ? cpu::workspace<double>(cpu::WorkspaceSlot::plane_sums, g.N * g.K) : nullptr;
  const std::int64_t block_groups = (l.blocks + kBlocksAtOnce - 1) / kBlocksAtOnce;
  const std::int64_t channel_parts = std::min<std::int64_t>(l.in, team_size());
  for (std::int64_t grp = 0; grp < g.groups; ++grp) {
    cpu::RegionErrors region_errors;
#pragma omp parallel num_threads(::juanji::team_size())
    {
      float* errors = nullptr;
      region_errors.guard([&] { errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, l.errors_size()); });
      // After the barrier every thread sees the same verdict, so all of them skip the work (and
      // its barriers) together.
#pragma omp barrier
      for (std::int64_t chunk = 0; chunk < (region_errors.failed() ? 0 : l.chunks); ++chunk) {
        const std::int64_t begin = l.chunk_begin(all, chunk), end = l.chunk_begin(all, chunk + 1);
        float* v = v_buffers + chunk % 2 * 16 * l.v_stride;
        float* z = z_buffers + chunk % 2 * 16 * l.z_stride;
        // A run of channels for each thread, as a static schedule of the channels would share them.
#pragma omp for schedule(static) nowait
        for (std::int64_t part = 0; part < channel_parts; ++part)
          winograd_input_chunk(c, all, x, grp, l.in * part / channel_parts, l.in * (part + 1) / channel_parts, begin,
                               end, v, l.v_row, l.v_stride);
#pragma omp for schedule(static)
        for (std::int64_t kb = 0; kb < l.blocks; ++kb)
          winograd_grad_block(g, all, l, dy, grp, kb, begin, end, 0, 4, errors, z, plane_sums);
        // The same (e, blocks) jobs go to the same thread every chunk (a static schedule of the same
        // loop): each gradient element is added to in chunk order by one thread. A job takes
        // kBlocksAtOnce blocks, which the AVX-512 kernel sums together.
#pragma omp for schedule(static) nowait
        for (std::int64_t job = 0; job < 16 * block_groups; ++job) {
          const std::int64_t e = job / block_groups, kb = job % block_groups * kBlocksAtOnce;
          kernels.winograd_weight_products_f32({z + e * l.z_stride + kb * l.z_block, v + e * l.v_stride, end - begin,
                                                l.v_row, l.in, du + e * l.du_stride + kb * l.du_block, chunk > 0,
                                                std::min(kBlocksAtOnce, l.blocks - kb), l.z_block, l.du_block});
        }
      }
    }
    region_errors.rethrow();
    winograd_weight_from_transformed(g, l, grp, du, plane_sums, dw, db);
  }
}

}  // namespace

void winograd_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db) {
  const Correlation c = forward_correlation(g);
  if (winograd_half_chunk_tiles(c) >= kWinogradGradMinHalfChunk) return winograd_weight_grad_by_halves(g, c, dy, x, dw, db);
  winograd_weight_grad_shared(g, c, dy, x, dw, db);
}

}  // namespace juanji::cpu::conv
