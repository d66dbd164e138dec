#include "juanji/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "core/checked_math.hpp"
#include "core/device.hpp"

namespace juanji {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::int64: return 8;
    case DType::bfloat16: return 2;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int64: return "int64";
    case DType::bfloat16: return "bfloat16";
  }
  return "?";
}

Device Device::parse(const std::string& text) {
  if (text == "cpu") return {DeviceType::cpu, 0};
  if (text == "cuda") return {DeviceType::cuda, 0};
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 &&
      std::all_of(text.begin() + 5, text.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      text.size() < 10) {
    return {DeviceType::cuda, std::stoi(text.substr(5))};
  }
  throw std::invalid_argument("device: expected 'cpu', 'cuda' or 'cuda:N', got '" + text + "'");
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

std::ostream& operator<<(std::ostream& out, ShapeText text) {
  const Shape& shape = text.shape;
  out << '(';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) out << ',';
  return out << ')';
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << shape_text(shape);
  return out.str();
}

std::int64_t checked_numel(const Shape& shape, const char* what) {
  for (auto s : shape) check(s >= 0, what, ": sizes must be non-negative, got ", shape_text(shape));
  const MaybeSize n = allocatable_numel(shape);
  check(n.has_value(), what, ": ", shape_text(shape), " has too many elements (size overflow)");
  return *n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  std::int64_t stride = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= std::max<std::int64_t>(shape[i], 1);
  }
  return strides;
}

Tensor make_view(const Tensor& base, std::int64_t offset, Shape shape, Shape strides) {
  Tensor t;
  t.storage_ = base.storage_;
  t.dtype_ = base.dtype_;
  t.offset_ = offset;
  t.shape_ = std::move(shape);
  t.strides_ = std::move(strides);
  return t;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  const std::int64_t n = checked_numel(shape);
  const std::size_t nbytes = static_cast<std::size_t>(n) * dtype_size(dtype);
  auto storage = std::make_shared<Storage>();
  storage->owner = device::allocate(nbytes, device);
  storage->data = storage->owner.get();
  storage->nbytes = nbytes;
  storage->device = device;
  Tensor t;
  t.storage_ = std::move(storage);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::arange(double start, double stop, double step, DType dtype) {
  check(step != 0 && std::isfinite(step), "arange: step must be finite and non-zero, got ", step);
  check(std::isfinite(start) && std::isfinite(stop), "arange: start and stop must be finite");
  const double count = std::ceil((stop - start) / step);
  // Checked before the conversion to int64, which is undefined for a count past its range.
  check(count <= static_cast<double>(kMaxNumel), "arange: [", start, ", ", stop, ") in steps of ", step,
        " has ", count, " elements, too many for a tensor");
  const std::int64_t n = count > 0 ? static_cast<std::int64_t>(count) : 0;
  Tensor t = empty({n}, dtype);
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = start + static_cast<double>(i) * step;
    switch (dtype) {
      case DType::float32: t.data<float>()[i] = static_cast<float>(v); break;
      case DType::float64: t.data<double>()[i] = v; break;
      case DType::int64: t.data<std::int64_t>()[i] = static_cast<std::int64_t>(v); break;
      case DType::bfloat16: t.data<bfloat16>()[i] = bfloat16(v); break;
    }
  }
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, const Shape& strides, DType dtype,
                         Device device, std::shared_ptr<void> owner, bool read_only) {
  check(shape.size() == strides.size(), "from_blob: shape ", shape_text(shape), " and strides ",
        shape_text(strides), " differ in length");
  checked_numel(shape);
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->device = device;
  storage->owner = std::move(owner);
  storage->read_only = read_only;
  MaybeSize span = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    check(strides[i] >= 0, "from_blob: negative strides ", shape_text(strides), " are not supported");
    if (shape[i] == 0) span = 0;
  }
  if (span != 0)
    for (std::size_t i = 0; i < shape.size(); ++i)
      span = checked_add(span, checked_mul(shape[i] - 1, strides[i]));
  const MaybeSize nbytes = checked_mul(span, static_cast<std::int64_t>(dtype_size(dtype)));
  check(nbytes.has_value(), "from_blob: shape ", shape_text(shape), " with strides ", shape_text(strides),
        " spans more bytes than int64 can count");
  storage->nbytes = static_cast<std::size_t>(*nbytes);
  Tensor t;
  t.storage_ = std::move(storage);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = strides;
  return t;
}

std::int64_t Tensor::size(std::int64_t d) const {
  const std::int64_t n = dim();
  check(d >= -n && d < n, "dim ", d, " is out of range for a tensor of shape ", shape_text(shape_));
  return shape_[static_cast<std::size_t>(d < 0 ? d + n : d)];
}

std::int64_t Tensor::numel() const {
  std::int64_t n = 1;
  for (auto s : shape_) n *= s;
  return n;
}

bool Tensor::is_contiguous() const {
  std::int64_t expected = 1;
  for (std::size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 1) continue;
    if (shape_[i] == 0) return true;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  check(defined(), "tensor is undefined");
  return static_cast<char*>(storage_->data) + offset_ * static_cast<std::int64_t>(dtype_size(dtype_));
}

Tensor Tensor::reshape(Shape shape) const {
  check(defined(), "reshape: tensor is undefined");
  MaybeSize known = 1;
  int infer = -1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      check(infer < 0, "reshape: only one dimension may be -1, got ", shape_text(shape));
      infer = static_cast<int>(i);
    } else {
      check(shape[i] >= 0, "reshape: invalid shape ", shape_text(shape));
      known = checked_mul(known, shape[i]);
    }
  }
  check(known.has_value(), "reshape: ", shape_text(shape), " has too many elements (size overflow)");
  const std::int64_t n = numel();
  if (infer >= 0) {
    check(*known != 0 && n % *known == 0, "reshape: cannot reshape ", shape_text(shape_), " into ",
          shape_text(shape));
    shape[static_cast<std::size_t>(infer)] = n / *known;
  }
  check(checked_numel(shape) == n, "reshape: cannot reshape ", shape_text(shape_), " (", n,
        " elements) into ", shape_text(shape));
  const Tensor src = is_contiguous() ? *this : contiguous();
  Shape strides = contiguous_strides(shape);
  return make_view(src, src.offset_, std::move(shape), std::move(strides));
}

static std::int64_t wrap_dim(std::int64_t d, std::int64_t n, const char* op) {
  check(d >= -n && d < n, op, ": dim ", d, " is out of range for ", n, " dimensions");
  return d < 0 ? d + n : d;
}

Tensor Tensor::transpose(std::int64_t a, std::int64_t b) const {
  a = wrap_dim(a, dim(), "transpose");
  b = wrap_dim(b, dim(), "transpose");
  Shape shape = shape_, strides = strides_;
  std::swap(shape[a], shape[b]);
  std::swap(strides[a], strides[b]);
  return make_view(*this, offset_, std::move(shape), std::move(strides));
}

Tensor Tensor::permute(const std::vector<std::int64_t>& order) const {
  check(static_cast<std::int64_t>(order.size()) == dim(), "permute: order has ", order.size(),
        " entries for a tensor of shape ", shape_text(shape_));
  std::vector<bool> seen(order.size(), false);
  Shape shape(order.size()), strides(order.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::int64_t d = wrap_dim(order[i], dim(), "permute");
    check(!seen[d], "permute: dim ", d, " repeated");
    seen[d] = true;
    shape[i] = shape_[d];
    strides[i] = strides_[d];
  }
  return make_view(*this, offset_, std::move(shape), std::move(strides));
}

Tensor Tensor::slice(std::int64_t d, std::int64_t start, std::int64_t stop, std::int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  check(step > 0, "slice: step must be positive, got ", step);
  const std::int64_t n = shape_[d];
  auto clamp = [n](std::int64_t i) { return std::clamp<std::int64_t>(i < 0 ? i + n : i, 0, n); };
  start = clamp(start);
  stop = clamp(stop);
  // Not (stop - start + step - 1) / step, which overflows for a huge step.
  const std::int64_t len = stop > start ? (stop - start - 1) / step + 1 : 0;
  Shape shape = shape_, strides = strides_;
  shape[d] = len;
  // With two or more elements step < n, so the product stays within the storage's offsets; one
  // element never advances, and a huge step times its stride could overflow.
  if (len > 1) strides[d] *= step;
  return make_view(*this, offset_ + (len ? start * strides_[d] : 0), std::move(shape),
                   std::move(strides));
}

Tensor Tensor::select(std::int64_t d, std::int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  const std::int64_t n = shape_[d];
  check(index >= -n && index < n, "select: index ", index, " is out of range for dim ", d,
        " of size ", n);
  if (index < 0) index += n;
  Shape shape = shape_, strides = strides_;
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  return make_view(*this, offset_ + index * strides_[d], std::move(shape), std::move(strides));
}

Tensor Tensor::unsqueeze(std::int64_t d) const {
  check(d >= 0 && d <= dim(), "unsqueeze: dim ", d, " is out of range for a tensor of shape ",
        shape_text(shape_));
  Shape shape = shape_, strides = strides_;
  const std::int64_t stride = d < dim() ? strides_[d] * shape_[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, stride);
  return make_view(*this, offset_, std::move(shape), std::move(strides));
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  const Tensor src = contiguous();
  Tensor t = empty(shape_, dtype_, target);
  device::copy_bytes(t.data_ptr(), target, src.data_ptr(), src.device(),
                     static_cast<std::size_t>(numel()) * dtype_size(dtype_));
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype, device());
  t.copy_(*this);
  return t;
}

void Tensor::copy_(const Tensor& src) {
  check(defined() && src.defined(), "copy_: tensor is undefined");
  check(!is_read_only(), "copy_: the destination ", shape_text(shape_),
        " is read-only memory (a read-only NumPy array or DLPack tensor); copy it first with clone()");
  check(shape_ == src.shape_, "copy_: destination shape ", shape_text(shape_),
        " differs from source shape ", shape_text(src.shape_));
  if (src.device() == device()) {
    device::strided_copy(*this, src);
    return;
  }
  // Across devices: packed blocks of one dtype go straight over (no temporary, so a reused
  // destination makes the copy allocation-free); others are staged as a packed block first.
  if (src.dtype() == dtype_ && is_contiguous() && src.is_contiguous()) {
    device::copy_bytes(data_ptr(), device(), src.data_ptr(), src.device(),
                       static_cast<std::size_t>(numel()) * dtype_size(dtype_));
    return;
  }
  const Tensor staged = src.contiguous().to(device());
  device::strided_copy(*this, staged);
}

void Tensor::fill_(double value) {
  check(defined(), "fill_: tensor is undefined");
  check(!is_read_only(), "fill_: the tensor ", shape_text(shape_),
        " is read-only memory (a read-only NumPy array or DLPack tensor); copy it first with clone()");
  device::fill(*this, value);
}

double Tensor::item() const {
  check(numel() == 1, "item: tensor of shape ", shape_text(shape_), " does not hold one element");
  const Tensor host = to(Device{});
  switch (dtype_) {
    case DType::float32: return *host.data<float>();
    case DType::float64: return *host.data<double>();
    case DType::int64: return static_cast<double>(*host.data<std::int64_t>());
    case DType::bfloat16: return static_cast<float>(*host.data<bfloat16>());
  }
  return 0;
}

std::string Tensor::repr() const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream out;
  out << "Tensor(shape=" << shape_str(shape_) << ", dtype=" << dtype_name(dtype_)
      << ", device=" << device().str() << ")";
  return out.str();
}

void check_defined(const Tensor& t, const char* name) {
  check(t.defined(), name, ": tensor is undefined");
}

void check_float(const Tensor& t, const char* name) {
  check_defined(t, name);
  check_type(t.dtype() == DType::float32 || t.dtype() == DType::float64, name,
             ": expected a float32 or float64 tensor, got ", dtype_name(t.dtype()), " of shape ",
             shape_text(t.shape()));
}

void check_same_dtype(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b) {
  check_type(a.dtype() == b.dtype(), name_a, " ", shape_text(a.shape()), " is ", dtype_name(a.dtype()),
             " but ", name_b, " ", shape_text(b.shape()), " is ", dtype_name(b.dtype()),
             "; convert one explicitly");
}

void check_same_device(const Tensor& a, const char* name_a, const Tensor& b, const char* name_b) {
  check(a.device() == b.device(), name_a, " is on ", a.device().str(), " but ", name_b, " is on ",
        b.device().str());
}

void check_dim(const Tensor& t, const char* name, std::int64_t dim, const char* layout) {
  check(t.dim() == dim, name, ": expected a ", dim, "-d tensor ", layout, ", got shape ",
        shape_text(t.shape()));
}

}  // namespace juanji
