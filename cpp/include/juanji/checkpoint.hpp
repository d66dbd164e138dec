// Checkpoint files in the safetensors layout (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length N, N bytes of JSON header padded with spaces, then the
// raw little-endian tensor bytes. Loading runs no code and checks every size in the header
// against the file before reading, so a hostile or truncated file gives std::invalid_argument.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
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

// One tensor as a checkpoint's header describes it.
struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t begin, end;  // its bytes within the data section
};

// An open checkpoint whose header has been read and checked against the file: the entries'
// byte ranges lie inside the file and cover its data section exactly, so reading the tensors
// allocates no more than the file holds. Nothing else is read until read_tensors, which lets a
// caller check the entries against what it expects first. Errors as for load_safetensors.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const Metadata& metadata() const { return metadata_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in data order
  // Every tensor as a fresh CPU tensor, in the order of entries().
  std::vector<NamedTensor> read_tensors();

 private:
  std::string where_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_;
  long data_start_ = 0;  // file offset of the data section (the header is at most 100 MB)
  Metadata metadata_;
  std::vector<SafetensorsEntry> entries_;
};

struct SafetensorsContents {
  Metadata metadata;
  std::vector<NamedTensor> tensors;  // in the order of their data in the file
};

// Reads a checkpoint into fresh CPU tensors. Any inconsistency (bad JSON, unknown dtype,
// offsets outside the file, overlapping or missing bytes, truncation) throws
// std::invalid_argument whose message names the file and the offending entry.
SafetensorsContents load_safetensors(const std::string& path);

}  // namespace juanji
