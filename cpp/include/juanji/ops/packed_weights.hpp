// A layer's weights packed once for many forwards: the CPU's convolution algorithms lay the
// weights out anew on every call (blocks of 16 filters, Winograd's transformed filters), which at
// batch 1 is a fifth of a ResNet-50's time, since each call reads the weights cold. A frozen
// model (nn::Sequential::freeze) keeps each algorithm's layout from its first use on, as
// onnxruntime does when it makes a session.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "juanji/tensor.hpp"

namespace juanji {

class PackedWeights {
 public:
  // Serves this weight tensor alone, which must never change while the packs live: a frozen
  // model's, in read-only storage that juanji allocated itself.
  explicit PackedWeights(Tensor weight);
  // Whether w is the weight tensor served (the same storage, offset, shape and dtype): the ops
  // pack any other weights anew on each call, as they do without packs.
  bool serves(const Tensor& w) const;
  // The layout named `name`, `floats` long, written by pack(out) at the first call; later calls,
  // from any thread, read the same memory (float32, 64-byte aligned).
  const float* get(const std::string& name, std::int64_t floats, const std::function<void(float*)>& pack);

 private:
  Tensor weight_;
  std::mutex mutex_;
  std::vector<std::pair<std::string, Tensor>> layouts_;
};

}  // namespace juanji
