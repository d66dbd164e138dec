#include "cpu/workspace.hpp"

#include <cstdlib>
#include <memory>
#include <new>

namespace juanji::cpu {
namespace {

struct Buffer {
  std::unique_ptr<void, void (*)(void*)> data{nullptr, std::free};
  std::size_t capacity = 0;
};

}  // namespace

void* workspace_bytes(WorkspaceSlot slot, std::size_t bytes) {
  thread_local Buffer buffers[static_cast<int>(WorkspaceSlot::count)];
  Buffer& buffer = buffers[static_cast<int>(slot)];
  if (bytes > buffer.capacity) {
    const std::size_t size = (bytes + bytes / 4 + 63) / 64 * 64;  // headroom against regrowth
    void* ptr = std::aligned_alloc(64, size);
    if (!ptr) throw std::bad_alloc();
    buffer.data.reset(ptr);
    buffer.capacity = size;
  }
  return buffer.data.get();
}

}  // namespace juanji::cpu
