// The data gradient of strided layers by stride phases: each phase a stride-1 data gradient of a
// smaller convolution, through the stride-1 algorithms.
#include <algorithm>
#include <array>
#include <numeric>
#include <utility>
#include <vector>

#include "cpu/conv/direct.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

StridePhase stride_phase(std::int64_t size, std::int64_t kernel, std::int64_t stride, std::int64_t dil,
                         std::int64_t pad, std::int64_t residue) {
  StridePhase phase{};
  phase.first = ((residue - pad) % stride + stride) % stride;
  phase.count = phase.first < size ? (size - 1 - phase.first) / stride + 1 : 0;
  const std::int64_t common = std::gcd(stride, dil);
  phase.tap_step = stride / common;
  phase.dilation = dil / common;
  // Residues of r*dil repeat every tap_step taps: the first tap_step hold r0 if any tap does.
  phase.first_tap = kernel;
  for (std::int64_t r = std::min(kernel, phase.tap_step) - 1; r >= 0; --r)
    if (r * dil % stride == residue) phase.first_tap = r;
  phase.taps = phase.first_tap < kernel ? (kernel - 1 - phase.first_tap) / phase.tap_step + 1 : 0;
  phase.padding = (phase.first + pad - phase.first_tap * dil) / stride;
  return phase;
}

ConvGeometry phase_geometry(const ConvGeometry& g, const StridePhase& rows, const StridePhase& cols) {
  ConvGeometry sub = g;
  sub.H = rows.count, sub.W = cols.count, sub.R = rows.taps, sub.S = cols.taps;
  sub.stride_h = sub.stride_w = 1;
  sub.dil_h = rows.dilation, sub.dil_w = cols.dilation;
  sub.pad_top = rows.padding, sub.pad_left = cols.padding;
  return sub;
}

std::int64_t phase_tap_index(const ConvGeometry& g, const StridePhase& rows, const StridePhase& cols, std::int64_t r,
                             std::int64_t s) {
  return (rows.first_tap + r * rows.tap_step) * g.S + cols.first_tap + s * cols.tap_step;
}

float phase_tap(const ConvGeometry& g, const float* w, const StridePhase& rows, const StridePhase& cols,
                std::int64_t kc, std::int64_t r, std::int64_t s) {
  return w[kc * g.R * g.S + phase_tap_index(g, rows, cols, r, s)];
}

namespace {

// Writes `planes` compact phase planes (rows.count x cols.count) into their rows and columns of
// the dx planes from `to` on.
void spread_phase(const ConvGeometry& g, const float* phase, std::int64_t planes, const StridePhase& rows,
                  const StridePhase& cols, float* to) {
  for (std::int64_t plane = 0; plane < planes; ++plane)
    for (std::int64_t i = 0; i < rows.count; ++i) {
      const float* from = phase + (plane * rows.count + i) * cols.count;
      float* row = to + (plane * g.H + rows.first + i * g.stride_h) * g.W + cols.first;
      for (std::int64_t j = 0; j < cols.count; ++j) row[j * g.stride_w] = from[j];
    }
}

// Phases that all take the direct kernel run as passes of one job per (image, group): the error
// is padded once for all of them (the stem's 4 phases copied it 4 times: 15% of the time) and
// each phase's planes are spread into dx while in cache.
constexpr std::int64_t kMaxDirectPhases = 16;

void direct_phases_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const std::int64_t Cg = g.C / g.groups, kernels = g.K * Cg;
  std::array<StridePhase, kMaxDirectPhases> row_phases, col_phases;
  std::array<DirectPass, kMaxDirectPhases> passes;
  std::int64_t count = 0, largest_plane = 0;
  // Each tap belongs to one phase: the phases' kernels take R*S taps in all.
  float* rotated = cpu::workspace<float>(cpu::WorkspaceSlot::phase_weights, kernels * g.R * g.S);
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      if (rows.count * cols.count == 0 || rows.taps * cols.taps == 0) continue;
      const ConvGeometry sub = phase_geometry(g, rows, cols);
      rotate_for_data_grad(
          sub, [&](std::int64_t kc, std::int64_t r, std::int64_t s) { return phase_tap(g, w, rows, cols, kc, r, s); },
          rotated);
      row_phases[count] = rows, col_phases[count] = cols;
      passes[count++] = direct_data_grad_pass(sub, rotated);
      rotated += kernels * sub.R * sub.S;
      largest_plane = std::max(largest_plane, rows.count * cols.count);
    }
  direct_conv_passes(
      g, dy, g.K, g.P, g.Q, passes.data(), count, nullptr, g.C, false, true,
      [&](std::int64_t, std::int64_t, std::int64_t) {
        return cpu::workspace<float>(cpu::WorkspaceSlot::phase_grad, Cg * largest_plane);
      },
      [&](std::int64_t n, std::int64_t grp, std::int64_t i, float* out) {
        spread_phase(g, out, Cg, row_phases[i], col_phases[i], dx + (n * g.C + grp * Cg) * g.H * g.W);
      });
}

// Phases that all take the filter-block kernel run in one pass (filter_block_phases_backward_data),
// their weights packed here. Each phase through the stride-1 path padded its own copy of the error
// and wrote a buffer that a pass of scalar stores then spread into dx: 31% of the time of 128x32
// planes of 14x14 from 64 channels (3x3, stride 2, padding 1), which went 1.98 -> 1.43 ms.
bool takes_filter_blocks(const ConvGeometry& sub) {
  const Correlation c = data_grad_correlation(sub);
  return !use_direct_data_grad(sub) && !use_winograd(c) && !pointwise_data_grad_by_gemm(sub) && use_filter_blocks(c);
}

void filter_block_phases(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  std::vector<FilterBlockPhase> phases;
  std::vector<std::pair<StridePhase, StridePhase>> taps_of;
  std::int64_t packed_floats = 0;
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      if (rows.count * cols.count == 0 || rows.taps * cols.taps == 0) continue;
      const Correlation c = data_grad_correlation(phase_geometry(g, rows, cols));
      phases.push_back({c, nullptr, rows.first, cols.first});
      taps_of.emplace_back(rows, cols);
      packed_floats += g.groups * c.blocks() * c.taps() * cpu::kFilterBlock;
    }
  float* packed = cpu::workspace<float>(cpu::WorkspaceSlot::phase_weights, packed_floats);
  std::vector<float*> packed_phase(phases.size());
  // Where each of a phase's taps lies in a kernel, in the packed order (rotated): the index
  // arithmetic made once, not for every weight (a 64 -> 128 layer's packing took 0.24 ms).
  std::vector<std::vector<std::int64_t>> kernel_taps(phases.size());
  for (std::size_t i = 0; i < phases.size(); ++i) {
    phases[i].packed = packed_phase[i] = packed;
    packed += g.groups * phases[i].c.blocks() * phases[i].c.taps() * cpu::kFilterBlock;
    const auto& [rows, cols] = taps_of[i];
    const std::int64_t taps = rows.taps * cols.taps;
    kernel_taps[i].resize(taps);
    for (std::int64_t r = 0; r < rows.taps; ++r)
      for (std::int64_t s = 0; s < cols.taps; ++s)
        kernel_taps[i][taps - 1 - (r * cols.taps + s)] = phase_tap_index(g, rows, cols, r, s);
  }
  // Block cb of phase i's weights as filter_block_backward_data packs a layer's: tap (k, r, s) of
  // channel ch is the phase's tap (R' - 1 - r, S' - 1 - s) of kernel (k, ch), zero past the group's
  // last channel.
  const std::int64_t blocks = phases.front().c.blocks(), jobs = std::int64_t(phases.size()) * g.groups * blocks;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) \
    if (jobs > 1 && packed_floats >= cpu::kParallelGrain)
  for (std::int64_t job = 0; job < jobs; ++job) {
    const std::int64_t i = job / (g.groups * blocks), grp = job / blocks % g.groups, cb = job % blocks;
    const auto& [rows, cols] = taps_of[i];
    const std::int64_t taps = rows.taps * cols.taps;
    const std::int64_t lanes = std::min<std::int64_t>(cpu::kFilterBlock, Cg - cb * cpu::kFilterBlock);
    float* out = packed_phase[i] + (grp * blocks + cb) * phases[i].c.taps() * cpu::kFilterBlock;
    if (lanes < cpu::kFilterBlock) std::fill(out, out + phases[i].c.taps() * cpu::kFilterBlock, 0.0f);
    const std::int64_t* kernel_tap = kernel_taps[i].data();
    for (std::int64_t k = 0; k < Kg; ++k) {
      const float* kernels = w + ((grp * Kg + k) * Cg + cb * cpu::kFilterBlock) * g.R * g.S;
      float* packed_k = out + k * taps * cpu::kFilterBlock;
      for (std::int64_t lane = 0; lane < lanes; ++lane)
        for (std::int64_t t = 0; t < taps; ++t)
          packed_k[t * cpu::kFilterBlock + lane] = kernels[lane * g.R * g.S + kernel_tap[t]];
    }
  }
  filter_block_phases_backward_data(g, dy, phases.data(), std::int64_t(phases.size()), dx);
}

// Every (row, column) phase through the stride-1 paths (direct, Winograd, filter blocks) into a
// compact buffer, then spread into dx; a phase without taps is zero. Each value of dx is the sum
// of one phase's stride-1 data gradient, so it is as deterministic as those.

}  // namespace

void strided_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const std::int64_t planes = g.N * g.C, kernels = g.K * (g.C / g.groups);
  bool all_direct = g.stride_h * g.stride_w <= kMaxDirectPhases;
  bool tapless = false, tapped = false, all_filter_blocks = true;
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      if (rows.count * cols.count == 0) continue;
      if (rows.taps == 0 || cols.taps == 0) tapless = true;  // no tap reaches these rows and columns
      else {
        const ConvGeometry sub = phase_geometry(g, rows, cols);
        tapped = true;
        all_direct = all_direct && use_direct_data_grad(sub);
        all_filter_blocks = all_filter_blocks && takes_filter_blocks(sub);
      }
    }
  // The phases no tap reaches are zero: dx zeroed whole, in one pass of vector stores, before the
  // other phases are spread over it, where each of those phases took a pass of scalar stores (a
  // 1x1 stride-2 layer's data gradient, three quarters zeros, 128x32 planes of 14x14: 0.37 ->
  // 0.26 ms; 128x64 of 7x7: 0.31 -> 0.28).
  if (tapless) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * g.H * g.W >= cpu::kParallelGrain)
    for (std::int64_t plane = 0; plane < planes; ++plane) std::fill(dx + plane * g.H * g.W, dx + (plane + 1) * g.H * g.W, 0.0f);
  }
  if (all_direct && all_finite(w, kernels * g.R * g.S)) return direct_phases_backward_data(g, dy, w, dx);
  if (tapped && all_filter_blocks) return filter_block_phases(g, dy, w, dx);
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      const std::int64_t phase_plane = rows.count * cols.count;
      if (phase_plane == 0 || rows.taps == 0 || cols.taps == 0) continue;
      const ConvGeometry sub = phase_geometry(g, rows, cols);
      float* sub_w = cpu::workspace<float>(cpu::WorkspaceSlot::phase_weights, kernels * sub.R * sub.S);
      for (std::int64_t kc = 0; kc < kernels; ++kc)
        for (std::int64_t r = 0; r < sub.R; ++r)
          for (std::int64_t s = 0; s < sub.S; ++s) sub_w[(kc * sub.R + r) * sub.S + s] = phase_tap(g, w, rows, cols, kc, r, s);
      float* phase = cpu::workspace<float>(cpu::WorkspaceSlot::phase_grad, planes * phase_plane);
      default_data_grad_f32(sub, dy, sub_w, phase);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * phase_plane >= cpu::kParallelGrain)
      for (std::int64_t plane = 0; plane < planes; ++plane)
        spread_phase(g, phase + plane * phase_plane, 1, rows, cols, dx + plane * g.H * g.W);
    }
}

}  // namespace juanji::cpu::conv
