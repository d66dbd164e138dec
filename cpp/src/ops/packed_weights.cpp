#include "juanji/ops/packed_weights.hpp"

#include "juanji/error.hpp"

namespace juanji {

PackedWeights::PackedWeights(Tensor weight) : weight_(std::move(weight)) {
  check(weight_.defined(), "PackedWeights: the weight tensor is undefined");
}

bool PackedWeights::serves(const Tensor& w) const {
  return w.storage() == weight_.storage() && w.offset() == weight_.offset() && w.shape() == weight_.shape() &&
         w.strides() == weight_.strides() && w.dtype() == weight_.dtype();
}

const float* PackedWeights::get(const std::string& name, std::int64_t floats,
                                const std::function<void(float*)>& pack) {
  const std::lock_guard<std::mutex> guard(mutex_);
  for (const auto& [layout_name, layout] : layouts_)
    if (layout_name == name && layout.numel() == floats) return layout.data<float>();
  Tensor layout = Tensor::empty({floats}, DType::float32);
  pack(layout.data<float>());
  layouts_.emplace_back(name, layout);
  return layout.data<float>();
}

}  // namespace juanji
