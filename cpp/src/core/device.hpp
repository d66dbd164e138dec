// The one place that knows which backend owns memory: allocation, copies and fills by device.
#pragma once

#include <cstddef>
#include <memory>

#include "juanji/tensor.hpp"

namespace juanji::device {

constexpr std::size_t kAlignment = 64;

std::shared_ptr<void> allocate(std::size_t nbytes, Device device);
// How many tensor storages have taken fresh memory so far (all devices; a CPU block that an
// earlier tensor gave back does not count): lets tests prove that a training step reuses its
// buffers.
std::uint64_t allocation_count();
// Whether the blocks that tensors on `device` give back serve later requests (the CPU's: one of
// 64 KiB or more any request it holds, a smaller one the next of its size), so that dropping a
// buffer and asking for one of its size again takes no fresh memory.
bool freed_blocks_are_reused(Device device);
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n);
void check_available(Device device);

// Element-wise strided copy dst[i] = (dst dtype) src[i]; both tensors on the same device, same shape.
void strided_copy(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);

}  // namespace juanji::device
