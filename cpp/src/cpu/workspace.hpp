// Grow-only scratch buffers, one set per thread: kernels reuse them, so a training step
// allocates nothing once the first step has sized them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace juanji::cpu {

enum class WorkspaceSlot { gemm_a, gemm_b, columns, batch_out, partials, phase_grad, phase_weights, norm_planes, plane_sums, count };

// At least `count` elements of T, 64-byte aligned, valid until the same slot is asked for again
// on this thread. Contents are not preserved.
void* workspace_bytes(WorkspaceSlot slot, std::size_t bytes);

// Throws AllocationError (a std::bad_alloc) when the memory cannot be had, naming the bytes.
template <class T>
T* workspace(WorkspaceSlot slot, std::int64_t count) {
  const std::size_t bytes = count > 0 && static_cast<std::uint64_t>(count) > SIZE_MAX / sizeof(T)
                                ? SIZE_MAX
                                : static_cast<std::size_t>(count < 0 ? 0 : count) * sizeof(T);
  return static_cast<T*>(workspace_bytes(slot, bytes));
}

}  // namespace juanji::cpu
