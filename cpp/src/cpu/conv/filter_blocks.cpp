// The filter-block kernels: 16 filters per vector, each input value read straight from the image.
#include <algorithm>
#include <vector>

#include "cpu/conv/filter_blocks.hpp"
#include "cpu/vec_math.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

// The filter-vectorised kernels hold 16 filters per vector block: they need 8 or more output
// channels per group to fill half a block. They beat im2col + GEMM on every such layer measured
// (one thread: lenet_c2 forward 33 -> 100 GF/s, res_64 67 -> 107, stem 54 -> 95; weight gradients
// 22 -> 88, 60 -> 101, 52 -> 78), since they read each input value straight from the image.
bool use_filter_blocks(const Correlation& c) { return c.out_per_group() >= cpu::kFilterBlock / 2; }

namespace {

// Short rows fill the kernel's blocks of pixels badly (7 -> 4 + 3 on AVX2's blocks of 6, each
// block a weight load and a tap loop for few multiply-adds). At stride 1 a plane can be computed as
// one long row over the source's rows, the source_width - out_w columns past each output row's end
// computed and dropped: taken where that makes fewer passes of the kernel, which takes up to
// `pass_pixels` pixels a pass and rows of 3 to 7 several at a time (on AVX2, 1x512x7x7 -> 2048,
// 1x1: 1158 -> 972 us; 3x3: 3040 -> 2870; 1x1024x14x14 -> 256: 827 -> 750; on AVX-512, where two
// rows of 7 make a pass of 14, the 3x3 layer's 61 pixels a plane went back to 49: 953 -> 862 us).
// Where the source rows are as wide as the output's (a pointwise layer), the long row is the
// output plane itself, whatever its width: no columns to drop. Each output is still summed alone
// in tap order: the same bits either way.
bool takes_plane_as_long_row(const Correlation& c, std::int64_t source_width, std::int64_t pass_pixels) {
  constexpr std::int64_t kWidest = 16;
  if (c.stride_h != 1 || c.stride_w != 1 || c.out_h < 2 || (c.out_w > kWidest && source_width != c.out_w)) return false;
  const auto passes = [&](std::int64_t pixels) { return (pixels + pass_pixels - 1) / pass_pixels; };
  const std::int64_t rows_at_once = cpu::filter_block_rows_at_once(c.out_w, pass_pixels);
  const std::int64_t row_passes =
      rows_at_once > 1 ? (c.out_h + rows_at_once - 1) / rows_at_once : c.out_h * passes(c.out_w);
  const std::int64_t long_row = (c.out_h - 1) * source_width + c.out_w;
  // As many passes either way: the long row only where it computes no more pixels (no padding).
  return passes(long_row) < row_passes || (passes(long_row) == row_passes && long_row <= c.out_h * c.out_w);
}

// A stem's few input channels are read from few lines, strided or not, and cost more to split than
// the split saves (1x3x224x224 -> 64, 3x3 stride 2: 200 -> 238 us split).
constexpr std::int64_t kFewestPhasedChannels = 16;

// Where the taps read: the image itself where it needs no padding (and, split_phases, its stride
// is 1), else a copy: zero-padded (or cropped), and with split_phases at a stride above 1 split
// into the stride's phases, a plane for each offset within a stride x stride cell that the taps
// read. Split, a tap reads consecutive floats for consecutive output pixels, as at stride 1 (the
// strided kernels' broadcasts each touched another line). Tap t = (c, r, s) reads at
// tap_offsets[t] from an output pixel's origin; output pixels lie row_step and col_step floats apart.
struct TapSource {
  std::int64_t height, width;  // of a copied plane (a phase's, where split)
  bool padded, phased;
  std::int64_t row_step, col_step;
  std::int64_t* tap_offsets;
  // Split: the phases the kernel's rows and columns read, in order of first use.
  std::vector<std::int64_t> row_phases, col_phases;

  TapSource(const Correlation& c, std::int64_t* offsets, bool split_phases) : tap_offsets(offsets) {
    const std::int64_t needed_h = (c.out_h - 1) * c.stride_h + (c.R - 1) * c.dil_h + 1;
    const std::int64_t needed_w = (c.out_w - 1) * c.stride_w + (c.S - 1) * c.dil_w + 1;
    padded = c.pad_top != 0 || c.pad_left != 0 || needed_h > c.in_h || needed_w > c.in_w;
    phased = split_phases && (c.stride_h > 1 || c.stride_w > 1) && c.in_per_group() >= kFewestPhasedChannels;
    if (!phased) {
      height = padded ? needed_h : c.in_h;
      width = padded ? needed_w : c.in_w;
      row_step = c.stride_h * width;
      col_step = c.stride_w;
      for (std::int64_t ch = 0; ch < c.in_per_group(); ++ch)
        for (std::int64_t r = 0; r < c.R; ++r)
          for (std::int64_t s = 0; s < c.S; ++s)
            offsets[(ch * c.R + r) * c.S + s] = (ch * height + r * c.dil_h) * width + s * c.dil_w;
      return;
    }
    const std::vector<std::int64_t> row_phase = phases_of(c.R, c.dil_h, c.stride_h, row_phases);
    const std::vector<std::int64_t> col_phase = phases_of(c.S, c.dil_w, c.stride_w, col_phases);
    height = c.out_h + (c.R - 1) * c.dil_h / c.stride_h;
    width = c.out_w + (c.S - 1) * c.dil_w / c.stride_w;
    row_step = width;
    col_step = 1;
    const std::int64_t phases = std::int64_t(row_phases.size() * col_phases.size());
    for (std::int64_t ch = 0; ch < c.in_per_group(); ++ch)
      for (std::int64_t r = 0; r < c.R; ++r)
        for (std::int64_t s = 0; s < c.S; ++s) {
          const std::int64_t plane = ch * phases + row_phase[r] * std::int64_t(col_phases.size()) + col_phase[s];
          offsets[(ch * c.R + r) * c.S + s] =
              (plane * height + r * c.dil_h / c.stride_h) * width + s * c.dil_w / c.stride_w;
        }
  }

  bool copied() const { return padded || phased; }
  // Floats of one image's (and group's) planes, as read.
  std::int64_t image_floats(const Correlation& c) const {
    return c.in_per_group() * std::int64_t(phased ? row_phases.size() * col_phases.size() : 1) * height * width;
  }

  // Image n's planes of group grp in src.
  static const float* image(const Correlation& c, const float* src, std::int64_t n, std::int64_t grp) {
    return src + (n * c.in_channels + grp * c.in_per_group()) * c.in_h * c.in_w;
  }

  // The planes of group grp of images [n, n + count), image m's image_step() floats after image
  // n's: src's own, or copies where they must be into the calling thread's workspace.
  const float* planes(const Correlation& c, const float* src, std::int64_t n, std::int64_t grp,
                      std::int64_t count = 1) const {
    if (!copied()) return image(c, src, n, grp);
    float* out = cpu::workspace<float>(cpu::WorkspaceSlot::columns, count * image_floats(c));
    for (std::int64_t m = 0; m < count; ++m)
      for (std::int64_t part = 0; part < copy_parts(c); ++part)
        copy_part(c, image(c, src, n + m, grp), part, out + m * image_floats(c));
    return out;
  }
  std::int64_t image_step(const Correlation& c) const {
    return copied() ? image_floats(c) : c.in_channels * c.in_h * c.in_w;
  }

  // A copy is made in parts that threads can share: a channel's planes, or, split, the planes of a
  // channel's row phase (the stem's 3 channels make 6 parts).
  std::int64_t copy_parts(const Correlation& c) const {
    return c.in_per_group() * (phased ? std::int64_t(row_phases.size()) : 1);
  }
  // Part `part` of the copy of one image's group (image: its planes) into out (the group's copy).
  void copy_part(const Correlation& c, const float* image, std::int64_t part, float* out) const {
    const std::int64_t in_plane = c.in_h * c.in_w;
    if (!phased) {
      pad_planes(image + part * in_plane, 1, c.in_h, c.in_w, c.pad_top, c.pad_left, out + part * height * width, height,
                 width);
      return;
    }
    const std::int64_t ch = part / std::int64_t(row_phases.size()), a = part % std::int64_t(row_phases.size());
    const std::int64_t col_count = std::int64_t(col_phases.size()), plane_floats = height * width;
    float* first_plane = out + (part * col_count) * plane_floats;
    for (std::int64_t y = 0; y < height; ++y) {
      const std::int64_t iy = y * c.stride_h + row_phases[a] - c.pad_top;
      for (std::int64_t b = 0; b < col_count; ++b) {
        float* row = first_plane + b * plane_floats + y * width;
        if (iy < 0 || iy >= c.in_h) {
          std::fill(row, row + width, 0.0f);
          continue;
        }
        // Phase column x reads image column x * stride_w + shift: inside the image for [lo, hi).
        const std::int64_t shift = col_phases[b] - c.pad_left;
        const std::int64_t lo = std::clamp<std::int64_t>((c.stride_w - 1 - shift) / c.stride_w, 0, width);
        const std::int64_t hi = std::clamp<std::int64_t>((c.in_w - shift + c.stride_w - 1) / c.stride_w, lo, width);
        const float* in = image + ch * in_plane + iy * c.in_w + shift;
        std::fill(row, row + lo, 0.0f);
        if (c.stride_w == 2)  // a constant stride, which the compiler vectorises
          for (std::int64_t x = lo; x < hi; ++x) row[x] = in[2 * x];
        else
          for (std::int64_t x = lo; x < hi; ++x) row[x] = in[x * c.stride_w];
        std::fill(row + hi, row + width, 0.0f);
      }
    }
  }

 private:
  // For one dimension of `taps` taps: the phase (tap * dilation % stride) each reads, as an index
  // into `phases`, which gets the phases in order of first use.
  static std::vector<std::int64_t> phases_of(std::int64_t taps, std::int64_t dilation, std::int64_t stride,
                                             std::vector<std::int64_t>& phases) {
    std::vector<std::int64_t> index(taps);
    for (std::int64_t t = 0; t < taps; ++t) {
      const std::int64_t phase = t * dilation % stride;
      const auto found = std::find(phases.begin(), phases.end(), phase);
      index[t] = found - phases.begin();
      if (found == phases.end()) phases.push_back(phase);
    }
    return index;
  }
};

// out = correlation of src with packed weights (+ bias); each output is written by one job. With
// kept_weights (a layout kept from call to call, which comes from memory, where one just packed is
// in cache) the kernel fetches the next blocks' weights while it computes (1x512x7x7 -> 512, 3x3,
// weights and input out of cache: 1466 -> 1225 us; with both in cache fetching cost 3-5%).
void filter_block_correlate(const Correlation& c, const float* src, const float* packed, const float* bias,
                            float* out, std::int64_t out_image, bool relu, bool kept_weights) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t blocks = c.blocks(), taps = c.taps(), per_group = c.out_per_group();
  const std::int64_t out_plane = c.out_h * c.out_w;
  const std::int64_t threads = team_size(), images = c.N * c.groups;
  // Fewer images than threads (inference) or images past L2 come from L3 or the other core: there
  // the split into phases and fetching the next pixels' source pay. A training batch's small
  // images do without (the ResNet step: 47.2 -> 45.5 ms, medians of six).
  const bool far_source = images < threads || c.in_per_group() * c.in_h * c.in_w * std::int64_t{sizeof(float)} > kL2Bytes;
  const TapSource source(c, cpu::workspace<std::int64_t>(cpu::WorkspaceSlot::gemm_b, taps), far_source);
  const std::int64_t image_floats = source.image_floats(c);
  // A job's blocks of filters take each block of pixels in turn, while its taps' source values
  // are in L1, when the source planes outgrow L2 (pw's 256 channels of 56x56: swept block by
  // block they were read from L3 four times: 6.4 -> 5.0 ms). Smaller sources stay in L2 across
  // block-by-block sweeps, which keep a block's weights in L1 and write 16 planes at a time (the
  // stem and pw's data gradient ran 8% and 15% slower interleaved).
  const bool interleave = image_floats * std::int64_t{sizeof(float)} > kL2Bytes;
  const bool long_row = takes_plane_as_long_row(c, source.width, kernels.filter_block_pixels);
  // A long row with no columns to drop is written where its outputs go, and can be shared out by
  // rows; others go through a buffer, their outputs copied out of it.
  const bool long_row_in_place = long_row && source.width == c.out_w;
  const bool through_buffer = long_row && !long_row_in_place;
  const std::int64_t row_length = long_row ? (c.out_h - 1) * source.width + c.out_w : c.out_w;
  // Where the images are fewer than the threads, an image's copy is made once, in parts shared out
  // among the threads, before the jobs that read it: each job had made its own, four copies of the
  // image for 1x128x56x56 -> 128, 3x3 stride 2 (with the split into phases: 982-1106 -> 851-960 us;
  // 1x256x56x56 -> 512, 1x1 stride 2: 881-1001 -> 818-915; ResNet-50 frozen at batch 1: 37.0 -> 36.2 ms).
  const bool shared_copy = source.copied() && images < threads;
  float* copies = shared_copy ? cpu::workspace<float>(cpu::WorkspaceSlot::columns, images * image_floats) : nullptr;
  if (shared_copy) {
    const std::int64_t parts = source.copy_parts(c);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
    for (std::int64_t i = 0; i < images * parts; ++i) {
      const std::int64_t outer = i / parts, n = outer / c.groups, grp = outer % c.groups;
      source.copy_part(c, TapSource::image(c, src, n, grp), i % parts, copies + outer * image_floats);
    }
  }
  // Jobs take some of the blocks of filters for a whole image, or, where the images are fewer than
  // the threads and the image outweighs the weights, all of the blocks for some of its rows: each
  // thread then reads its share of the image and all of the weights, not all of the image and its
  // share of the weights (a frozen ResNet-50 at batch 1, 1x256x56x56 -> 64: 0.70 -> 0.58 ms,
  // 1x512x28x28 -> 128: 0.52 -> 0.44).
  const FilterBlockJobs block_jobs(images, blocks);
  const bool split_rows = images < threads && (!long_row || long_row_in_place) && c.out_h >= threads &&
                          image_floats > blocks * taps * cpu::kFilterBlock;
  const std::int64_t row_parts = split_rows ? threads : 1;
  const std::int64_t job_count = split_rows ? images * row_parts : block_jobs.count();
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (job_count > 1)
  for (std::int64_t job = 0; job < job_count; ++job) errors.guard([&] {
    const std::int64_t outer = split_rows ? job / row_parts : block_jobs.outer_of(job);
    const std::int64_t n = outer / c.groups, grp = outer % c.groups;
    const std::int64_t first_block = split_rows ? 0 : block_jobs.first_block(job);
    const std::int64_t end_block = split_rows ? blocks : block_jobs.end_block(job);
    const std::int64_t part = split_rows ? job % row_parts : 0;
    const std::int64_t first_row = c.out_h * part / row_parts, rows = c.out_h * (part + 1) / row_parts - first_row;
    const float* planes =
        (shared_copy ? copies + outer * image_floats : source.planes(c, src, n, grp)) + first_row * source.row_step;
    const std::int64_t step = interleave ? end_block - first_block : kBlocksAtOnce;
    float* long_out = through_buffer
                          ? cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, step * cpu::kFilterBlock * row_length)
                          : nullptr;
    // The job's part of the plane as one row: its rows' outputs one after another.
    const std::int64_t pixels = long_row_in_place ? rows * c.out_w : row_length;
    for (std::int64_t kb = first_block; kb < end_block; kb += step) {
      const std::int64_t first = grp * per_group + kb * cpu::kFilterBlock;
      const std::int64_t blocks_now = std::min(step, end_block - kb);
      const std::int64_t filters = std::min((kb + blocks_now) * cpu::kFilterBlock, per_group) - kb * cpu::kFilterBlock;
      float* block_out = out + n * out_image + first * out_plane + first_row * c.out_w;
      // The blocks after these in the group, or its first ones (the next image's).
      const std::int64_t next_kb = kb + blocks_now < blocks ? kb + blocks_now : 0;
      const float* next_weights = kept_weights ? packed + (grp * blocks + next_kb) * taps * cpu::kFilterBlock : nullptr;
      const std::int64_t next_blocks = std::min(step, blocks - next_kb);
      const cpu::FilterBlockConvArgs args{planes,
                                          source.tap_offsets,
                                          taps,
                                          source.row_step,
                                          source.col_step,
                                          packed + (grp * blocks + kb) * taps * cpu::kFilterBlock,
                                          blocks_now,
                                          bias ? bias + first : nullptr,
                                          through_buffer ? long_out : block_out,
                                          filters,
                                          long_row ? 1 : rows,
                                          pixels,
                                          through_buffer ? row_length : out_plane,
                                          pixels,
                                          1,
                                          relu,
                                          far_source,
                                          next_weights,
                                          next_blocks};
      kernels.filter_block_conv_f32(args);
      if (through_buffer)
        for (std::int64_t k = 0; k < filters; ++k)
          for (std::int64_t p = 0; p < c.out_h; ++p)
            std::copy_n(long_out + k * row_length + p * source.width, c.out_w, block_out + k * out_plane + p * c.out_w);
    }
  });
  errors.rethrow();
}

}  // namespace

void filter_block_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                          bool relu, PackedWeights* packs, std::int64_t y_image) {
  const Correlation c = forward_correlation(g);
  const std::int64_t taps = c.taps(), Kg = c.out_per_group();
  // Written tap by tap, each tap's 16 floats one after another: filter by filter, each write fell
  // on another cache line, and a 512x512x3x3 layer's packing took longer than its products.
  const float* packed = pack_filter_blocks(c, taps * cpu::kFilterBlock, [&](std::int64_t grp, std::int64_t kb, float* out) {
    const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, Kg - kb * cpu::kFilterBlock);
    const float* first = w + (grp * Kg + kb * cpu::kFilterBlock) * taps;
    for (std::int64_t t = 0; t < taps; ++t)
      for (std::int64_t k = 0; k < filters; ++k) out[t * cpu::kFilterBlock + k] = first[k * taps + t];
  }, packs, "filter_blocks");
  filter_block_correlate(c, x, packed, bias, y, y_image, relu, packs != nullptr);
}

// Stride 1 only: dx is the correlation of the padded error with the rotated, transposed kernel.
void filter_block_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const Correlation c = data_grad_correlation(g);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
  // Tap (k, r, s) of output channel ch is weight (k, ch, R-1-r, S-1-s). Written without a division
  // per element: the gather took 1.4 ms of res_256's 19 ms data gradient on one core.
  const float* packed = pack_filter_blocks(c, c.taps() * cpu::kFilterBlock, [&](std::int64_t grp, std::int64_t cb, float* out) {
    for (std::int64_t k = 0; k < Kg; ++k)
      for (std::int64_t lane = 0; lane < std::min<std::int64_t>(cpu::kFilterBlock, Cg - cb * cpu::kFilterBlock); ++lane) {
        const float* kernel = w + ((grp * Kg + k) * Cg + cb * cpu::kFilterBlock + lane) * RS;
        for (std::int64_t rs = 0; rs < RS; ++rs) out[(k * RS + RS - 1 - rs) * cpu::kFilterBlock + lane] = kernel[rs];
      }
  });
  filter_block_correlate(c, dy, packed, nullptr, dx, c.out_channels * c.out_h * c.out_w, false, false);
}

void filter_block_phases_backward_data(const ConvGeometry& g, const float* dy, const FilterBlockPhase* phases,
                                       std::int64_t count, float* dx) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t Kg = phases[0].c.in_per_group(), Cg = phases[0].c.out_per_group(), blocks = phases[0].c.blocks();
  // The copy every phase reads: as far above and left of the error as the most padded phase
  // needs, as far below and right as the farthest reaching one needs.
  std::int64_t top = 0, left = 0, height = 1, width = 1, tap_count = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    top = std::max(top, phases[i].c.pad_top);
    left = std::max(left, phases[i].c.pad_left);
    tap_count += phases[i].c.taps();
  }
  for (std::int64_t i = 0; i < count; ++i) {
    const Correlation& c = phases[i].c;
    height = std::max(height, top - c.pad_top + c.out_h + (c.R - 1) * c.dil_h);
    width = std::max(width, left - c.pad_left + c.out_w + (c.S - 1) * c.dil_w);
  }
  std::int64_t* offsets = cpu::workspace<std::int64_t>(cpu::WorkspaceSlot::gemm_b, tap_count);
  std::vector<std::int64_t> first_tap(count);
  for (std::int64_t i = 0, t = 0; i < count; ++i) {
    const Correlation& c = phases[i].c;
    first_tap[i] = t;
    for (std::int64_t k = 0; k < Kg; ++k)
      for (std::int64_t r = 0; r < c.R; ++r)
        for (std::int64_t s = 0; s < c.S; ++s) offsets[t++] = (k * height + r * c.dil_h) * width + s * c.dil_w;
  }
  const std::int64_t image_floats = Kg * height * width, images = g.N * g.groups;
  // As filter_block_correlate decides them.
  const bool far_source = images < team_size() || image_floats * std::int64_t{sizeof(float)} > kL2Bytes;
  const bool interleave = image_floats * std::int64_t{sizeof(float)} > kL2Bytes;
  const FilterBlockJobs jobs(images, blocks);
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs.count() > 1)
  for (std::int64_t job = 0; job < jobs.count(); ++job) errors.guard([&] {
    const std::int64_t n = jobs.outer_of(job) / g.groups, grp = jobs.outer_of(job) % g.groups;
    const std::int64_t first_block = jobs.first_block(job), end_block = jobs.end_block(job);
    const std::int64_t step = interleave ? end_block - first_block : kBlocksAtOnce;
    float* copy = cpu::workspace<float>(cpu::WorkspaceSlot::columns, image_floats);
    pad_planes(dy + (n * g.K + grp * Kg) * g.P * g.Q, Kg, g.P, g.Q, top, left, copy, height, width);
    for (std::int64_t i = 0; i < count; ++i) {
      const Correlation& c = phases[i].c;
      for (std::int64_t kb = first_block; kb < end_block; kb += step) {
        const std::int64_t blocks_now = std::min(step, end_block - kb);
        const std::int64_t channels = std::min((kb + blocks_now) * cpu::kFilterBlock, Cg) - kb * cpu::kFilterBlock;
        float* out = dx + (n * g.C + grp * Cg + kb * cpu::kFilterBlock) * g.H * g.W + phases[i].first_row * g.W +
                     phases[i].first_col;
        kernels.filter_block_conv_f32({copy + (top - c.pad_top) * width + left - c.pad_left,
                                       offsets + first_tap[i],
                                       c.taps(),
                                       width,
                                       1,
                                       phases[i].packed + (grp * blocks + kb) * c.taps() * cpu::kFilterBlock,
                                       blocks_now,
                                       nullptr,
                                       out,
                                       channels,
                                       c.out_h,
                                       c.out_w,
                                       g.H * g.W,
                                       g.stride_h * g.W,
                                       g.stride_w,
                                       false,
                                       far_source,
                                       nullptr,
                                       0});
      }
    }
  });
  errors.rethrow();
}

namespace {

// Image chunks accumulate their images in order into partial gradients, which are then added in
// chunk order. The chunk count is a function of the shape alone (never of the thread count): as
// many as it takes to give (chunk, group, block) jobs enough to share, since every chunk's partial
// is a full copy of the gradient (res_256 with 8 chunks wrote and re-read 19 MB of partials). Where
// the source is copied (copied_image_floats an image's copy, else 0), every job that splits an
// image's blocks among others copies the image again (a ResNet's 64 -> 128 stride-2 layer on 7x7
// images copied each image four times: a third of its weight gradient): more chunks, fewer splits,
// as far as the partials they add cost less than the copies they save.
std::int64_t weight_grad_chunks(const ConvGeometry& g, std::int64_t blocks, std::int64_t copied_image_floats) {
  constexpr std::int64_t kWantedJobs = 16;
  const std::int64_t per_chunk = g.groups * blocks, most = std::min<std::int64_t>(g.N, 8);
  const std::int64_t fewest = std::clamp<std::int64_t>((kWantedJobs + per_chunk - 1) / per_chunk, 1, most);
  if (copied_image_floats == 0) return fewest;
  // Each chunk's blocks split as FilterBlockJobs splits them for two threads.
  const auto floats_moved = [&](std::int64_t chunks) {
    const std::int64_t outer = chunks * g.groups;
    const std::int64_t splits = std::clamp<std::int64_t>((kWantedJobs / 2 + outer - 1) / outer, 1, blocks);
    return g.N * splits * copied_image_floats + 2 * chunks * g.K * (g.C / g.groups) * g.R * g.S;
  };
  std::int64_t best = fewest;
  for (std::int64_t chunks = fewest + 1; chunks <= most; ++chunks)
    if (floats_moved(chunks) < floats_moved(best)) best = chunks;
  return best;
}

}  // namespace

// The floats of the images a weight gradient's pass reads (their copies and errors): about 256 KB,
// in L2 while every block of filters takes them.
constexpr std::int64_t kImagesFloats = 64 * 1024;

// db (or null) gets the bias gradient: each error plane summed while the block reads it, the
// plane sums then added image by image, as bias_grad adds them.
void filter_block_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                                  float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const Correlation c = forward_correlation(g);
  const std::int64_t taps = c.taps(), blocks = c.blocks(), Kg = c.out_per_group(), PQ = g.P * g.Q;
  const std::int64_t block_size = taps * cpu::kFilterBlock, chunk_size = g.groups * blocks * block_size;
  const TapSource source(c, cpu::workspace<std::int64_t>(cpu::WorkspaceSlot::gemm_b, taps), false);
  const std::int64_t chunks = weight_grad_chunks(g, blocks, source.copied() ? source.image_floats(c) : 0);
  float* partials = cpu::workspace<float>(cpu::WorkspaceSlot::partials, chunks * chunk_size);
  double* plane_sums = db ? cpu::workspace<double>(cpu::WorkspaceSlot::plane_sums, g.N * g.K) : nullptr;
  const FilterBlockJobs jobs(chunks * g.groups, blocks);
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs.count() > 1)
  for (std::int64_t job = 0; job < jobs.count(); ++job) errors.guard([&] {
    const std::int64_t chunk = jobs.outer_of(job) / g.groups, grp = jobs.outer_of(job) % g.groups;
    const std::int64_t kb_begin = jobs.first_block(job), kb_end = jobs.end_block(job);
    float* partial = partials + chunk * chunk_size + grp * blocks * block_size;
    std::fill(partial + kb_begin * block_size, partial + kb_end * block_size, 0.0f);
    const std::int64_t n_begin = g.N * chunk / chunks, n_end = g.N * (chunk + 1) / chunks;
    // Images a pass, their copies and errors within kImagesFloats, each block's accumulators kept
    // in registers from image to image.
    const std::int64_t image_errors = PQ * cpu::kFilterBlock;
    const std::int64_t per_pass = std::clamp<std::int64_t>(
        kImagesFloats / ((source.copied() ? source.image_floats(c) : 0) + kBlocksAtOnce * image_errors), 1,
        std::max<std::int64_t>(n_end - n_begin, 1));
    const std::int64_t errors_block = per_pass * image_errors;
    float* errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, kBlocksAtOnce * errors_block);
    for (std::int64_t n0 = n_begin; n0 < n_end; n0 += per_pass) {
      const std::int64_t images = std::min(per_pass, n_end - n0);
      const float* planes = source.planes(c, x, n0, grp, images);
      for (std::int64_t kb0 = kb_begin; kb0 < kb_end; kb0 += kBlocksAtOnce) {
        const std::int64_t blocks_now = std::min(kBlocksAtOnce, kb_end - kb0);
        for (std::int64_t kb = kb0; kb < kb0 + blocks_now; ++kb)
          for (std::int64_t n = n0; n < n0 + images; ++n) {
            // The block's errors, pixel-major, zero past the group's last filter.
            const std::int64_t first_filter = n * g.K + grp * Kg + kb * cpu::kFilterBlock;
            const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, Kg - kb * cpu::kFilterBlock);
            kernels.pixel_major_row_f32(dy + first_filter * PQ, PQ, filters, PQ, PQ,
                                        errors + (kb - kb0) * errors_block + (n - n0) * image_errors);
            if (plane_sums)
              for (std::int64_t f = 0; f < filters; ++f)
                plane_sums[first_filter + f] = cpu::sum_elements(dy + (first_filter + f) * PQ, PQ);
          }
        const cpu::FilterBlockWeightGradArgs args{planes,          source.tap_offsets, taps,       source.row_step,
                                                  source.col_step, errors,             g.P,        g.Q,
                                                  partial + kb0 * block_size,     blocks_now, errors_block,
                                                  block_size,      images,             source.image_step(c),
                                                  image_errors};
        kernels.filter_block_weight_grad_f32(args);
      }
    }
  });
  errors.rethrow();
  // Each filter's gradient is its chunks' partial sums added chunk after chunk, a block's 16
  // filters side by side as its partials lie (filter by filter, loads a chunk apart took a tenth
  // of a 64 -> 128 stride-2 layer's weight gradient), then written filter by filter.
  constexpr std::int64_t kStripTaps = 256;
  const std::int64_t strips = (taps + kStripTaps - 1) / kStripTaps, sum_jobs = g.groups * blocks * strips;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) \
    if (sum_jobs > 1 && chunks * chunk_size >= cpu::kParallelGrain)
  for (std::int64_t job = 0; job < sum_jobs; ++job) {
    const std::int64_t grp = job / (blocks * strips), kb = job / strips % blocks, strip = job % strips;
    const std::int64_t t0 = strip * kStripTaps, count = std::min(kStripTaps, taps - t0);
    const float* block = partials + (grp * blocks + kb) * block_size + t0 * cpu::kFilterBlock;
    alignas(64) float sums[kStripTaps * cpu::kFilterBlock];
    std::copy(block, block + count * cpu::kFilterBlock, sums);
    for (std::int64_t chunk = 1; chunk < chunks; ++chunk) {
      const float* part = block + chunk * chunk_size;
      for (std::int64_t i = 0; i < count * cpu::kFilterBlock; ++i) sums[i] += part[i];
    }
    const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, Kg - kb * cpu::kFilterBlock);
    for (std::int64_t k = 0; k < filters; ++k) {
      float* row = dw + (grp * Kg + kb * cpu::kFilterBlock + k) * taps + t0;
      for (std::int64_t t = 0; t < count; ++t) row[t] = sums[t * cpu::kFilterBlock + k];
    }
  }
  if (db) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (g.K * g.N >= cpu::kParallelGrain)
    for (std::int64_t filter = 0; filter < g.K; ++filter) {
      double bias = 0;
      for (std::int64_t n = 0; n < g.N; ++n) bias += plane_sums[n * g.K + filter];
      db[filter] = static_cast<float>(bias);
    }
  }
}

}  // namespace juanji::cpu::conv
