// What Winograd shares with the filter-block kernels: weights packed in blocks of filters, and
// the jobs of a pass over them. Private to the library.
#pragma once

#include <algorithm>

#include "cpu/conv/algorithms.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

// Blocks of filters a job hands the filter-block and Winograd-product kernels at once (where the
// filter-block source fits L2): two, which the AVX-512 kernels sum together, a broadcast source
// value per two multiply-adds.
constexpr std::int64_t kBlocksAtOnce = 2;

// Weights as (group, block, block_size floats), zero past a group's last filter. fill(grp, kb, out)
// writes one block, every float of it for the filters the block has, e.g. out[t * 16 + k] for tap
// t of filter kb * 16 + k of the group (a block short of filters is zeroed first; a full one is
// not, since zeroing 512x512x3x3 weights took a tenth of the layer's time at batch 1). Into the
// calling thread's workspace, or with packs into its layout `layout`, written at the first call
// only.
template <class Fill>
const float* pack_filter_blocks(const Correlation& c, std::int64_t block_size, Fill fill, PackedWeights* packs = nullptr,
                                const char* layout = nullptr) {
  const std::int64_t blocks = c.blocks(), jobs = c.groups * blocks, per_group = c.out_per_group();
  const auto pack_into = [&](float* packed) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs > 1 && jobs * block_size >= cpu::kParallelGrain)
    for (std::int64_t job = 0; job < jobs; ++job) {
      float* out = packed + job * block_size;
      if ((job % blocks + 1) * cpu::kFilterBlock > per_group) std::fill(out, out + block_size, 0.0f);
      fill(job / blocks, job % blocks, out);
    }
  };
  if (packs) return packs->get(layout, jobs * block_size, pack_into);
  float* packed = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_a, jobs * block_size);
  pack_into(packed);
  return packed;
}

// Jobs of a filter-block pass: every (image or image chunk, group) with its blocks of filters
// split into as few ranges as keep the threads busy, since each job pads its images anew. A range
// keeps kBlocksAtOnce blocks or more, which the kernels take together, where the threads still
// have a job each (at batch 1, 128 filters had gone in 8 single blocks, each padding the image:
// 1x128x56x56 -> 128, 3x3 stride 2, 1740 -> 1106 us; 1x64x56x56 -> 128, 1x1 stride 2, 83 -> 63).
struct FilterBlockJobs {
  std::int64_t outer, blocks, splits;
  FilterBlockJobs(std::int64_t outer_jobs, std::int64_t filter_blocks) : outer(outer_jobs), blocks(filter_blocks) {
    const std::int64_t threads = team_size();
    splits = std::clamp<std::int64_t>((4 * threads + outer - 1) / outer, 1, blocks);
    if (blocks / splits < kBlocksAtOnce)
      splits = std::clamp<std::int64_t>(std::max((threads + outer - 1) / outer, blocks / kBlocksAtOnce), 1, blocks);
  }
  std::int64_t count() const { return outer * splits; }
  std::int64_t outer_of(std::int64_t job) const { return job / splits; }
  std::int64_t first_block(std::int64_t job) const { return blocks * (job % splits) / splits; }
  std::int64_t end_block(std::int64_t job) const { return blocks * (job % splits + 1) / splits; }
};

}  // namespace juanji::cpu::conv
