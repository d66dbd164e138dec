#include "cpu/workspace.hpp"

#include "juanji/error.hpp"

#include <cstdlib>
#include <limits>
#include <memory>
#include <new>

namespace juanji::cpu {
namespace {

struct Buffer {
  std::unique_ptr<void, void (*)(void*)> data{nullptr, std::free};
  std::size_t capacity = 0;
};

const char* slot_purpose(WorkspaceSlot slot) {
  switch (slot) {
    case WorkspaceSlot::gemm_a: return "scratch (packed GEMM operand A)";
    case WorkspaceSlot::gemm_b: return "scratch (packed GEMM operand B)";
    case WorkspaceSlot::columns: return "scratch (padded or unfolded convolution input)";
    case WorkspaceSlot::batch_out: return "scratch (a batch's convolution output or errors)";
    case WorkspaceSlot::partials: return "scratch (partial sums of a gradient)";
    case WorkspaceSlot::phase_grad: return "scratch (a stride phase's data gradient)";
    case WorkspaceSlot::phase_weights: return "scratch (a stride phase's weights)";
    case WorkspaceSlot::norm_planes: return "scratch (batch-norm planes)";
    case WorkspaceSlot::plane_sums: return "scratch (per-plane sums)";
    case WorkspaceSlot::count: break;
  }
  return "scratch";
}

}  // namespace

void* workspace_bytes(WorkspaceSlot slot, std::size_t bytes) {
  thread_local Buffer buffers[static_cast<int>(WorkspaceSlot::count)];
  Buffer& buffer = buffers[static_cast<int>(slot)];
  if (bytes > buffer.capacity) {
    if (bytes > std::numeric_limits<std::size_t>::max() / 2) throw AllocationError(bytes, slot_purpose(slot));
    const std::size_t size = (bytes + bytes / 4 + 63) / 64 * 64;  // headroom against regrowth
    void* ptr = std::aligned_alloc(64, size);
    if (!ptr) throw AllocationError(size, slot_purpose(slot));
    buffer.data.reset(ptr);
    buffer.capacity = size;
  }
  return buffer.data.get();
}

}  // namespace juanji::cpu
