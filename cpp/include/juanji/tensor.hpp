// Tensor: an n-d strided view of shared, 64-byte aligned storage on the CPU or a CUDA device.
// Strides are in elements. Views (reshape of contiguous data, slice, transpose, permute) share
// storage; contiguous(), clone() and to() copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "juanji/bfloat16.hpp"
#include "juanji/error.hpp"

namespace juanji {

// bfloat16: see juanji/bfloat16.hpp; kernels take it where they say so, the others refuse it.
enum class DType : std::uint8_t { float32, float64, int64, bfloat16 };
std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

enum class DeviceType : std::uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  static Device parse(const std::string& text);  // "cpu", "cuda", "cuda:1"
  std::string str() const;
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  friend bool operator==(Device a, Device b) { return a.type == b.type && a.index == b.index; }
  friend bool operator!=(Device a, Device b) { return !(a == b); }
};

using Shape = std::vector<std::int64_t>;
std::string shape_str(const Shape& shape);  // "(2, 3)", "(5,)"
// The same text, formatted only when streamed: as an argument of check(), which evaluates its
// message parts on every call, it costs nothing while the check passes.
struct ShapeText {
  const Shape& shape;
};
inline ShapeText shape_text(const Shape& shape) { return {shape}; }
std::ostream& operator<<(std::ostream& out, ShapeText text);
// Number of elements; throws std::invalid_argument naming `what` on negative sizes or overflow.
std::int64_t checked_numel(const Shape& shape, const char* what = "shape");
Shape contiguous_strides(const Shape& shape);

// A block of memory and whatever keeps it alive (our allocator, a NumPy array, a DLPack producer).
struct Storage {
  void* data = nullptr;
  std::size_t nbytes = 0;
  Device device;
  std::shared_ptr<void> owner;
  // Memory its producer lent for reading only (a read-only NumPy array or memory map, a DLPack
  // tensor flagged read-only): in-place ops on it raise std::invalid_argument.
  bool read_only = false;
};

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::float32, Device device = {});
  static Tensor zeros(const Shape& shape, DType dtype = DType::float32, Device device = {});
  static Tensor full(const Shape& shape, double value, DType dtype = DType::float32,
                     Device device = {});
  static Tensor arange(double start, double stop, double step, DType dtype = DType::float32);
  // Wraps memory owned elsewhere; `owner` is released when the last view goes away.
  static Tensor from_blob(void* data, const Shape& shape, const Shape& strides, DType dtype,
                          Device device, std::shared_ptr<void> owner, bool read_only = false);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  std::int64_t size(std::int64_t d) const;  // negative d counts from the end
  std::int64_t numel() const;
  std::int64_t offset() const { return offset_; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device{}; }
  bool is_contiguous() const;
  bool is_read_only() const { return storage_ && storage_->read_only; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* data_ptr() const;
  template <class T>
  T* data() const;  // checks that T matches dtype()

  Tensor reshape(Shape shape) const;  // a view when contiguous, otherwise a copy; one -1 allowed
  Tensor transpose(std::int64_t a, std::int64_t b) const;
  Tensor permute(const std::vector<std::int64_t>& order) const;
  Tensor slice(std::int64_t dim, std::int64_t start, std::int64_t stop, std::int64_t step = 1) const;
  Tensor select(std::int64_t dim, std::int64_t index) const;  // drops `dim`
  Tensor unsqueeze(std::int64_t dim) const;  // a new axis of size 1 before `dim` (0..dim())

  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device device) const;  // same tensor when already there
  Tensor to(DType dtype) const;    // same tensor when already that dtype
  // In-place: both raise std::invalid_argument on a read-only tensor.
  void copy_(const Tensor& src);   // same shape; converts dtype; any strides and devices
  void fill_(double value);
  void zero_() { fill_(0.0); }
  double item() const;             // one-element tensor to double

  std::string repr() const;

 private:
  std::shared_ptr<Storage> storage_;
  std::int64_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::float32;
  friend Tensor make_view(const Tensor&, std::int64_t, Shape, Shape);
};

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::float32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::float64;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr DType value = DType::int64;
};
template <>
struct dtype_of<bfloat16> {
  static constexpr DType value = DType::bfloat16;
};

template <class T>
T* Tensor::data() const {
  check_type(dtype_ == dtype_of<T>::value, "tensor has dtype ", dtype_name(dtype_),
             ", expected ", dtype_name(dtype_of<T>::value));
  return static_cast<T*>(data_ptr());
}

// Argument checks shared by all ops; each names the argument in its message.
void check_defined(const Tensor& t, const char* name);
void check_float(const Tensor& t, const char* name);  // float32 or float64
void check_same_dtype(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b);
void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b);
void check_dim(const Tensor& t, const char* name, std::int64_t dim, const char* layout);

// Seeded random numbers: one global generator, so manual_seed(n) makes every result repeatable.
// In bfloat16: rand truncates the float32 draws (staying below 1), the others round the float64
// draws to nearest even.
void manual_seed(std::uint64_t seed);
Tensor rand(const Shape& shape, DType dtype = DType::float32);   // uniform [0, 1)
Tensor randn(const Shape& shape, DType dtype = DType::float32);  // standard normal
Tensor uniform(const Shape& shape, double low, double high, DType dtype = DType::float32);
std::uint64_t random_u64();

}  // namespace juanji
