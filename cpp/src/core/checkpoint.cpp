#include "juanji/checkpoint.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string_view>
#include <system_error>
#include <unordered_set>

#include "juanji/json.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define JUANJI_HAVE_FSYNC 1
#endif

namespace juanji {
namespace {

constexpr bool kHostIsLittleEndian =
#if defined(__BYTE_ORDER__)
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
#else
    true;  // compilers without __BYTE_ORDER__ (MSVC) only target little-endian machines
#endif

constexpr std::string_view kMetadataKey = "__metadata__";

struct DTypeCode {
  DType dtype;
  std::string_view code;
};
constexpr DTypeCode kDTypeCodes[] = {
    {DType::float32, "F32"}, {DType::float64, "F64"}, {DType::int64, "I64"}, {DType::bfloat16, "BF16"}};

// Valid safetensors dtypes that juanji has no tensor type for: named as such in the error.
constexpr std::string_view kUnsupportedCodes[] = {
    "BOOL", "U8",  "I8",      "U16",     "I16",     "F16",     "U32",    "I32",
    "U64",  "C64", "F4",  "F6_E2M3", "F6_E3M2", "F8_E4M3", "F8_E5M2", "F8_E8M0"};

std::string_view dtype_code(DType dtype) {
  for (const auto& entry : kDTypeCodes)
    if (entry.dtype == dtype) return entry.code;
  throw std::invalid_argument(detail::concat("safetensors: no code for dtype ", dtype_name(dtype)));
}

using FilePtr = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

// Failures of the operating system (missing file, full disk) rather than of the file's contents.
[[noreturn]] void throw_os_error(const std::string& where, const char* what) {
  throw std::system_error(errno, std::generic_category(), where + ": " + what);
}

void reverse_each_item(char* data, std::size_t nbytes, std::size_t itemsize) {
  for (std::size_t i = 0; i + itemsize <= nbytes; i += itemsize)
    std::reverse(data + i, data + i + itemsize);
}

void write_bytes(std::FILE* file, const void* data, std::size_t nbytes, const std::string& where) {
  if (nbytes != 0 && std::fwrite(data, 1, nbytes, file) != nbytes)
    throw_os_error(where, "cannot write");
}

// Tensor data is stored little-endian whatever the host.
void write_little_endian(std::FILE* file, const void* data, std::size_t nbytes,
                         std::size_t itemsize, const std::string& where) {
  if constexpr (kHostIsLittleEndian) {
    write_bytes(file, data, nbytes, where);
  } else {
    constexpr std::size_t kChunk = 1 << 20;  // a multiple of every item size
    std::vector<char> buffer;
    const char* bytes = static_cast<const char*>(data);
    for (std::size_t done = 0; done < nbytes; done += kChunk) {
      const std::size_t n = std::min(kChunk, nbytes - done);
      buffer.assign(bytes + done, bytes + done + n);
      reverse_each_item(buffer.data(), n, itemsize);
      write_bytes(file, buffer.data(), n, where);
    }
  }
}

std::string offsets_str(std::uint64_t begin, std::uint64_t end) {
  return detail::concat("[", begin, ", ", end, "]");
}

// Removes the temporary file unless the rename over the destination went through.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::string path) : path_(std::move(path)) {}
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    if (!kept_) std::remove(path_.c_str());
  }
  const std::string& path() const { return path_; }
  void keep() { kept_ = true; }

 private:
  std::string path_;
  bool kept_ = false;
};

std::string temporary_name_beside(const std::string& path) {
  std::random_device entropy;  // not the seeded global generator: saving must not shift it
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".tmp-%08x%08x", entropy(), entropy());
  return path + suffix;
}

}  // namespace

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const Metadata& metadata) {
  const std::string where = "save_safetensors '" + path + "'";

  Json::Object header;
  if (!metadata.empty()) {
    std::unordered_set<std::string_view> keys;
    Json::Object entries;
    for (const auto& [key, value] : metadata) {
      check(keys.insert(key).second, where, ": duplicate metadata key '", key, "'");
      entries.emplace_back(key, Json(value));
    }
    header.emplace_back(std::string(kMetadataKey), Json::object(std::move(entries)));
  }
  std::unordered_set<std::string_view> names;
  std::int64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    check(!name.empty(), where, ": tensor names must be non-empty");
    check(name != kMetadataKey, where, ": '", kMetadataKey, "' is reserved for metadata");
    check(names.insert(name).second, where, ": duplicate tensor name '", name, "'");
    check(tensor.defined(), where, ": tensor '", name, "' is undefined");
    Json shape = Json::array();
    for (const auto size : tensor.shape()) shape.push_back(Json(size));
    const std::int64_t nbytes = tensor.numel() * static_cast<std::int64_t>(dtype_size(tensor.dtype()));
    Json::Object entry;
    entry.emplace_back("dtype", Json(std::string(dtype_code(tensor.dtype()))));
    entry.emplace_back("shape", std::move(shape));
    entry.emplace_back("data_offsets", Json::array({Json(offset), Json(offset + nbytes)}));
    header.emplace_back(name, Json::object(std::move(entry)));
    offset += nbytes;
  }
  std::string header_text = Json::object(std::move(header)).dump();
  // Padding the header to 8 bytes aligns the data for readers that map the file.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  TemporaryFile temporary(temporary_name_beside(path));
  {
    FilePtr file(std::fopen(temporary.path().c_str(), "wb"), &std::fclose);
    if (!file) throw_os_error(where, "cannot create a temporary file beside it");
    unsigned char length_bytes[8];
    const std::uint64_t length = header_text.size();
    for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(length >> (8 * i));
    write_bytes(file.get(), length_bytes, sizeof length_bytes, where);
    write_bytes(file.get(), header_text.data(), header_text.size(), where);
    for (const auto& named : tensors) {
      // One tensor at a time on the host, so a CUDA model never needs a full host copy.
      const Tensor host = named.tensor.to(Device{}).contiguous();
      const std::size_t itemsize = dtype_size(host.dtype());
      write_little_endian(file.get(), host.data_ptr(), static_cast<std::size_t>(host.numel()) * itemsize,
                          itemsize, where);
    }
    if (std::fflush(file.get()) != 0) throw_os_error(where, "cannot write");
#if defined(JUANJI_HAVE_FSYNC)
    // The data must be on disk before the rename makes it the checkpoint.
    if (::fsync(fileno(file.get())) != 0) throw_os_error(where, "cannot sync");
#endif
    if (std::fclose(file.release()) != 0) throw_os_error(where, "cannot write");
  }
  std::error_code error;
  std::filesystem::rename(temporary.path(), path, error);
  if (error) throw std::system_error(error, where + ": cannot replace the file");
  temporary.keep();
}

namespace {

// Checks one header entry against the format; `where` names the file.
class HeaderValidator {
 public:
  HeaderValidator(const std::string& where, std::uint64_t data_size)
      : where_(where), data_size_(data_size) {}

  Metadata metadata(const Json& value) const {
    check(value.is_object(), where_, ": ", kMetadataKey, " must be an object of strings, got ",
          value.kind_name());
    Metadata result;
    for (const auto& [key, item] : value.as_object()) {
      if (!item.is_string())
        throw std::invalid_argument(detail::concat(where_, ": ", kMetadataKey, " value for key '",
                                                   key, "' must be a string, got ",
                                                   item.kind_name(), " ", item.dump()));
      result.emplace_back(key, item.as_string());
    }
    return result;
  }

  SafetensorsEntry tensor(const std::string& name, const Json& spec) const {
    check(!name.empty(), where_, ": a tensor has an empty name");
    const std::string what = detail::concat(where_, ": tensor '", name, "'");
    check(spec.is_object(), what, ": expected an object with dtype, shape and data_offsets, got ",
          spec.kind_name());
    for (const auto& member : spec.as_object()) {
      const std::string& key = member.first;
      check(key == "dtype" || key == "shape" || key == "data_offsets", what, ": unexpected key '",
            key, "' (expected only dtype, shape and data_offsets)");
    }
    for (const char* key : {"dtype", "shape", "data_offsets"})
      check(spec.contains(key), what, ": missing '", key, "'");

    SafetensorsEntry entry{name, parse_dtype(what, spec.at("dtype")),
                           parse_shape(what, spec.at("shape")), 0, 0};
    const Json& offsets = spec.at("data_offsets");
    const bool pair_of_ints = offsets.is_array() && offsets.size() == 2 &&
                              offsets.at(0).is_integer() && offsets.at(1).is_integer() &&
                              offsets.at(0).as_int() >= 0 && offsets.at(1).as_int() >= 0;
    if (!pair_of_ints)
      throw std::invalid_argument(detail::concat(
          what, ": data_offsets must be two non-negative integers, got ", offsets.dump()));
    entry.begin = static_cast<std::uint64_t>(offsets.at(0).as_int());
    entry.end = static_cast<std::uint64_t>(offsets.at(1).as_int());
    const std::string offsets_text = offsets_str(entry.begin, entry.end);
    check(entry.begin <= entry.end, what, ": data_offsets ", offsets_text, " end before they begin");
    check(entry.end <= data_size_, what, ": data_offsets ", offsets_text, " reach past the ",
          data_size_, " data bytes in the file (truncated file?)");

    std::int64_t numel = 0;
    try {
      numel = checked_numel(entry.shape, "shape");
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(what + ": " + e.what());
    }
    const auto needed = static_cast<std::uint64_t>(numel) * dtype_size(entry.dtype);
    check(entry.end - entry.begin == needed, what, ": data_offsets ", offsets_text, " hold ",
          entry.end - entry.begin, " bytes but shape ", shape_text(entry.shape), " ",
          dtype_name(entry.dtype), " needs ", needed);
    return entry;
  }

 private:
  static DType parse_dtype(const std::string& what, const Json& value) {
    if (!value.is_string())
      throw std::invalid_argument(detail::concat(what, ": dtype must be a string, got ", value.dump()));
    const std::string& code = value.as_string();
    for (const auto& entry : kDTypeCodes)
      if (entry.code == code) return entry.dtype;
    const bool known = std::find(std::begin(kUnsupportedCodes), std::end(kUnsupportedCodes),
                                 code) != std::end(kUnsupportedCodes);
    throw std::invalid_argument(detail::concat(what, ": ", known ? "unsupported" : "unknown",
                                               " dtype '", code,
                                               "' (juanji reads F32, F64, BF16 and I64)"));
  }

  static Shape parse_shape(const std::string& what, const Json& value) {
    Shape shape;
    const auto fail = [&] {
      throw std::invalid_argument(detail::concat(
          what, ": shape entries must be non-negative integers, got ", value.dump()));
    };
    if (!value.is_array()) fail();
    for (const auto& size : value.as_array()) {
      if (!size.is_integer() || size.as_int() < 0) fail();
      shape.push_back(size.as_int());
    }
    return shape;
  }

  const std::string& where_;
  std::uint64_t data_size_;
};

void read_exact(std::FILE* file, void* data, std::size_t nbytes, const std::string& where,
                const std::string& what) {
  if (nbytes == 0) return;
  if (std::fread(data, 1, nbytes, file) == nbytes) return;
  if (std::ferror(file)) throw_os_error(where, "cannot read");
  throw std::invalid_argument(where + ": file is truncated (ends inside " + what + ")");
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path)
    : where_("checkpoint '" + path + "'"), file_(nullptr, &std::fclose) {
  std::error_code error;
  const std::uintmax_t file_size = std::filesystem::file_size(path, error);
  if (error) throw std::system_error(error, where_ + ": cannot read");
  file_.reset(std::fopen(path.c_str(), "rb"));
  if (!file_) throw_os_error(where_, "cannot open");

  check(file_size != 0, where_, ": not a safetensors file (the file is empty)");
  check(file_size >= 8, where_, ": not a safetensors file (", file_size,
        " bytes, too short for the 8-byte header length)");
  unsigned char length_bytes[8];
  read_exact(file_.get(), length_bytes, sizeof length_bytes, where_, "the header length");
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  // Any other file (text, an image) reads as a length far beyond its size: say so first.
  check(header_length <= file_size - 8, where_, ": not a safetensors file (header length ",
        header_length, " exceeds the ", file_size - 8, " bytes after the length field)");
  check(header_length <= kSafetensorsMaxHeaderBytes, where_, ": header length ", header_length,
        " exceeds the limit of ", kSafetensorsMaxHeaderBytes, " bytes");

  std::string header_text(header_length, '\0');
  read_exact(file_.get(), header_text.data(), header_text.size(), where_, "the header");
  data_start_ = static_cast<long>(8 + header_length);
  Json header;
  try {
    header = parse_json(header_text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where_ + ": header is not valid JSON: " + e.what());
  }
  check(header.is_object(), where_, ": header must be a JSON object, got ", header.kind_name());

  const std::uint64_t data_size = file_size - 8 - header_length;
  const HeaderValidator validator(where_, data_size);
  for (const auto& [name, value] : header.as_object()) {
    if (name == kMetadataKey)
      metadata_ = validator.metadata(value);
    else
      entries_.push_back(validator.tensor(name, value));
  }

  // Sorted by position, every byte of the data section must belong to exactly one tensor.
  std::sort(entries_.begin(), entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  std::uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const auto& entry : entries_) {
    if (previous && entry.begin < previous->end)
      throw std::invalid_argument(detail::concat(
          where_, ": tensor '", entry.name, "' data_offsets ", offsets_str(entry.begin, entry.end),
          " overlap tensor '", previous->name, "' at ", offsets_str(previous->begin, previous->end)));
    check(entry.begin == covered, where_, ": data bytes ", offsets_str(covered, entry.begin),
          " before tensor '", entry.name, "' belong to no tensor");
    covered = entry.end;
    previous = &entry;
  }
  check(covered == data_size, where_, ": the last ", data_size - covered,
        " data bytes belong to no tensor");
}

std::vector<NamedTensor> SafetensorsFile::read_tensors() {
  if (std::fseek(file_.get(), data_start_, SEEK_SET) != 0) throw_os_error(where_, "cannot read");
  std::vector<NamedTensor> tensors;
  tensors.reserve(entries_.size());
  for (const auto& entry : entries_) {
    Tensor tensor = Tensor::empty(entry.shape, entry.dtype);
    const std::size_t nbytes = static_cast<std::size_t>(entry.end - entry.begin);
    read_exact(file_.get(), tensor.data_ptr(), nbytes, where_, "tensor '" + entry.name + "'");
    if constexpr (!kHostIsLittleEndian)
      reverse_each_item(static_cast<char*>(tensor.data_ptr()), nbytes, dtype_size(entry.dtype));
    tensors.push_back({entry.name, std::move(tensor)});
  }
  return tensors;
}

SafetensorsContents load_safetensors(const std::string& path) {
  SafetensorsFile file(path);
  std::vector<NamedTensor> tensors = file.read_tensors();
  return {file.metadata(), std::move(tensors)};
}

}  // namespace juanji
