// Checkpoint files in the safetensors layout (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length N, N bytes of JSON header padded with spaces, then the
// raw little-endian tensor bytes. Loading runs no code and checks every size in the header
// against the file before reading, so a hostile or truncated file gives std::invalid_argument.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "juanji/tensor.hpp"

namespace juanji {

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// The header's "__metadata__": string keys to string values, in file order.
using Metadata = std::vector<std::pair<std::string, std::string>>;

// Largest JSON header load_safetensors accepts (the safetensors library's own limit).
constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Writes `tensors` in the given order with no gaps (dtype F32, F64 or I64). Tensors may be
// strided views or on a CUDA device. Names must be unique, non-empty and not "__metadata__".
// The file is written beside `path` under a temporary name and renamed over it, so readers
// never see a half-written checkpoint.
void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const Metadata& metadata = {});

struct SafetensorsContents {
  Metadata metadata;
  std::vector<NamedTensor> tensors;  // in the order of their data in the file
};

// Reads a checkpoint into fresh CPU tensors. Any inconsistency (bad JSON, unknown dtype,
// offsets outside the file, overlapping or missing bytes, truncation) throws
// std::invalid_argument whose message names the file and the offending entry.
SafetensorsContents load_safetensors(const std::string& path);

}  // namespace juanji
