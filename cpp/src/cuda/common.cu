// Host-side helpers of the CUDA op kernels (declared in cuda/common.cuh).
#include <algorithm>
#include <array>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/ops.hpp"

namespace juanji::cuda {

void use_device_of(const Tensor& t) { JUANJI_CUDA_CHECK(cudaSetDevice(t.device().index)); }

void check_operand(const Tensor& t, const char* op, const char* name, Device device, DType dtype,
                   std::int64_t numel) {
  check(t.defined(), op, ": ", name, " is undefined");
  check(t.device() == device, op, ": ", name, " ", shape_text(t.shape()), " is on ",
        t.device().str(), " but the other operands are on ", device.str());
  check(t.is_contiguous(), op, ": ", name, " must be contiguous, got shape ", shape_text(t.shape()),
        " with strides ", shape_text(t.strides()));
  check_type(t.dtype() == dtype, op, ": ", name, " ", shape_text(t.shape()), " is ",
             dtype_name(t.dtype()), ", expected ", dtype_name(dtype));
  check(t.numel() == numel, op, ": ", name, " has shape ", shape_text(t.shape()), " (", t.numel(),
        " elements), expected ", numel, " elements");
}

unsigned grid_for(index_t n, int threads) {
  // 2^20 blocks of 256 threads cover 2^28 items per sweep: plenty for any GPU.
  constexpr index_t kMaxBlocks = index_t(1) << 20;
  const index_t blocks = std::clamp<index_t>(ceil_div(n, threads), 1, kMaxBlocks);
  return static_cast<unsigned>(blocks);
}

unsigned blocks_for(index_t items) {
  constexpr index_t kMaxBlocks = index_t(1) << 20;
  return static_cast<unsigned>(std::clamp<index_t>(items, 1, kMaxBlocks));
}

void* scratch(const Tensor& like, Scratch slot, std::size_t nbytes) {
  // Buffers are tensors of doubles so their storage is 64-byte aligned and freed with the
  // device's allocator; they only grow, so steady-state training allocates nothing.
  struct Buffers {
    Device device;
    std::array<Tensor, static_cast<std::size_t>(Scratch::count)> slots;
  };
  thread_local std::vector<Buffers> per_device;
  const Device device = like.device();
  auto it = std::find_if(per_device.begin(), per_device.end(),
                         [device](const Buffers& b) { return b.device == device; });
  if (it == per_device.end()) {
    per_device.push_back(Buffers{device, {}});
    it = per_device.end() - 1;
  }
  Tensor& buffer = it->slots[static_cast<std::size_t>(slot)];
  const std::int64_t doubles = static_cast<std::int64_t>((nbytes + sizeof(double) - 1) / sizeof(double));
  if (!buffer.defined() || buffer.numel() < doubles)
    buffer = Tensor::empty({std::max<std::int64_t>(doubles, 1)}, DType::float64, device);
  return buffer.data_ptr();
}

void synchronize(int device_index) {
  JUANJI_CUDA_CHECK(cudaSetDevice(device_index));
  JUANJI_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace juanji::cuda
