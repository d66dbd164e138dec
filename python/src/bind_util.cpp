#include "bind_util.hpp"

#include <cstring>
#include <string>
#include <utility>

namespace juanji::bind {

namespace {

// ml_dtypes.bfloat16's NumPy dtype. ml_dtypes is optional: imported on the first conversion of
// a bfloat16 tensor to NumPy, never with juanji.
py::dtype bfloat16_numpy_dtype() {
  py::module_ ml_dtypes;
  try {
    ml_dtypes = py::module_::import("ml_dtypes");
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_ImportError)) throw;
    throw py::import_error("bfloat16 tensors need ml_dtypes (pip install ml_dtypes)");
  }
  return py::dtype::from_args(ml_dtypes.attr("bfloat16"));
}

}  // namespace

py::dtype numpy_dtype(DType dtype) {
  if (dtype == DType::bfloat16) return bfloat16_numpy_dtype();
  return py::dtype(dtype_name(dtype));
}

bool is_bfloat16(const py::dtype& dt) {
  // ml_dtypes' types are of NumPy's kind 'V'; the test on it keeps float arrays' path short.
  if (dt.kind() != 'V') return false;
  // Whoever holds an ml_dtypes dtype has imported ml_dtypes: without it loaded, dt is not one.
  const py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("ml_dtypes")) return false;
  const py::object ml_dtypes = modules["ml_dtypes"];
  return !ml_dtypes.is_none() && dt.attr("type").is(ml_dtypes.attr("bfloat16"));
}

DType dtype_arg(py::handle obj, const char* name) {
  // Spelt as a string, bfloat16 needs no ml_dtypes.
  if (py::isinstance<py::str>(obj) && obj.cast<std::string>() == "bfloat16") return DType::bfloat16;
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(obj));
  } catch (const py::error_already_set&) {
    throw TypeError(std::string(name) + ": not a dtype: " + py::str(obj).cast<std::string>());
  }
  if (dt.is(py::dtype::of<float>()) || dt.equal(py::dtype::of<float>())) return DType::float32;
  if (dt.equal(py::dtype::of<double>())) return DType::float64;
  if (dt.equal(py::dtype::of<std::int64_t>())) return DType::int64;
  if (is_bfloat16(dt)) return DType::bfloat16;
  throw TypeError(std::string(name) + ": unsupported dtype " + py::str(dt).cast<std::string>() +
                  "; juanji holds float32, float64, bfloat16 and int64");
}

std::string path_arg(py::handle obj, const char* name) {
  const py::module_ os = py::module_::import("os");
  py::object path;
  try {
    path = os.attr("fspath")(obj);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    throw TypeError(std::string(name) + ": " + py::str(e.value()).cast<std::string>());
  }
  // Encoding str as the file system does (undecodable bytes come back from their surrogates).
  auto bytes = os.attr("fsencode")(path).cast<std::string>();
  if (bytes.find('\0') != std::string::npos)
    throw std::invalid_argument(std::string(name) + ": embedded null character");
  return bytes;
}

py::str error_text(const char* what) {
  return py::reinterpret_steal<py::str>(
      PyUnicode_DecodeUTF8(what, static_cast<py::ssize_t>(std::strlen(what)), "backslashreplace"));
}

Device device_arg(py::handle obj) {
  return obj.is_none() ? Device{} : Device::parse(py::str(obj).cast<std::string>());
}

std::variant<Device, DType> device_or_dtype_arg(py::handle obj) {
  // No dtype's str() starts so: np.float32 is "<class 'numpy.float32'>".
  const std::string text = py::str(obj).cast<std::string>();
  if (text == "cpu" || text.rfind("cuda", 0) == 0) return Device::parse(text);
  return dtype_arg(obj, "to");
}

std::string type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>();
}

namespace {

std::string array_desc(const py::array& a) {
  Shape shape(a.shape(), a.shape() + a.ndim());
  return std::string("array of dtype ") + py::str(a.dtype()).cast<std::string>() + " and shape " +
         shape_str(shape);
}

bool is_native_float(const py::array& a) {
  return a.dtype().equal(py::dtype::of<float>()) || a.dtype().equal(py::dtype::of<double>());
}

}  // namespace

Tensor from_numpy(py::array array, const char* name) {
  const char kind = array.dtype().kind();
  const bool bfloat16 = is_bfloat16(array.dtype());
  if (kind != 'f' && kind != 'i' && kind != 'u' && !bfloat16)
    throw TypeError(std::string(name) + ": expected a float32 or float64 array, got " +
                    array_desc(array));
  DType dtype;
  if (bfloat16) {
    dtype = DType::bfloat16;
  } else if (kind == 'f') {
    if (array.dtype().itemsize() == 8)
      dtype = DType::float64;
    else if (array.dtype().itemsize() == 4)
      dtype = DType::float32;
    else
      throw TypeError(std::string(name) + ": expected a float32 or float64 array, got " +
                      array_desc(array));
  } else {
    dtype = DType::int64;
  }
  const Shape shape(array.shape(), array.shape() + array.ndim());
  checked_numel(shape, name);
  const int flags = py::array::c_style;
  const bool native = bfloat16    ? array.dtype().equal(bfloat16_numpy_dtype())
                      : kind == 'f' ? is_native_float(array)
                                    : array.dtype().equal(py::dtype::of<std::int64_t>());
  const bool zero_copy = native && (array.flags() & flags) &&
                         reinterpret_cast<std::uintptr_t>(array.data()) % dtype_size(dtype) == 0;
  if (zero_copy) {
    auto* keep = new py::object(array);
    std::shared_ptr<void> owner(keep, [](void* p) {
      py::gil_scoped_acquire gil;
      delete static_cast<py::object*>(p);
    });
    // A read-only array (or memory map) stays read-only: in-place ops on the tensor raise.
    return Tensor::from_blob(const_cast<void*>(array.data()), shape, contiguous_strides(shape), dtype,
                             Device{}, std::move(owner), !array.writeable());
  }
  // Copy through NumPy into fresh aligned storage: handles any strides, byte order and the
  // integer-to-int64 conversion of label arrays.
  Tensor t = Tensor::empty(shape, dtype);
  py::array target = to_numpy(t, py::none());
  py::module_::import("numpy").attr("copyto")(target, array, py::arg("casting") = "unsafe");
  return t;
}

py::array to_numpy(const Tensor& t, py::handle owner) {
  check(t.device().is_cpu(), "numpy: tensor is on ", t.device().str(),
        "; copy it to the CPU first with .to('cpu')");
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  std::vector<py::ssize_t> strides;
  for (auto s : t.strides()) strides.push_back(static_cast<py::ssize_t>(s * dtype_size(t.dtype())));
  py::array view;
  if (owner.is_none()) {
    // No Python owner: keep the storage alive through a capsule.
    auto* keep = new Tensor(t);
    py::capsule base(keep, [](void* p) { delete static_cast<Tensor*>(p); });
    view = py::array(numpy_dtype(t.dtype()), shape, strides, t.data_ptr(), base);
  } else {
    view = py::array(numpy_dtype(t.dtype()), shape, strides, t.data_ptr(), owner);
  }
  if (t.is_read_only()) view.attr("flags").attr("writeable") = false;
  return view;
}

namespace {

// bfloat16 passes: the ops that take it say so, the others refuse it by name.
void check_float_or_bfloat16(const Tensor& t, const char* name) {
  if (t.defined() && t.dtype() == DType::bfloat16) return;
  check_float(t, name);
}

}  // namespace

Tensor tensor_arg(py::handle obj, const char* name) {
  if (py::isinstance<Tensor>(obj)) {
    Tensor t = obj.cast<Tensor>();
    check_float_or_bfloat16(t, name);
    return t;
  }
  if (obj.is_none()) throw TypeError(std::string(name) + ": expected a tensor or array, got None");
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().kind() != 'f' && !is_bfloat16(a.dtype()))
      throw TypeError(std::string(name) + ": expected a float32, float64 or bfloat16 array, got " +
                      array_desc(a));
    return from_numpy(a, name);
  }
  if (py::hasattr(obj, "__dlpack__") && !py::isinstance<py::sequence>(obj)) {
    Tensor t = py::module_::import("juanji._core").attr("from_dlpack")(obj).cast<Tensor>();
    check_float_or_bfloat16(t, name);
    return t;
  }
  if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj) &&
      !py::isinstance<py::bytes>(obj)) {
    py::array a = py::module_::import("numpy").attr("asarray")(obj);
    const char kind = a.dtype().kind();
    if (kind == 'i' || kind == 'u' || kind == 'b')
      a = py::module_::import("numpy").attr("asarray")(obj, py::dtype::of<float>());
    else if (kind != 'f')
      throw TypeError(std::string(name) + ": expected numbers, got " + array_desc(a));
    return from_numpy(a, name);
  }
  throw TypeError(std::string(name) + ": expected a juanji.Tensor or a NumPy array, got " +
                  type_name(obj));
}

Tensor optional_tensor_arg(py::handle obj, const char* name) {
  return obj.is_none() ? Tensor() : tensor_arg(obj, name);
}

Tensor labels_arg(py::handle obj, const char* name) {
  if (py::isinstance<Tensor>(obj)) {
    Tensor t = obj.cast<Tensor>();
    check_type(t.dtype() == DType::int64, name, ": expected integer labels, got a ",
               dtype_name(t.dtype()), " tensor of shape ", shape_text(t.shape()));
    return t;
  }
  py::array a = py::module_::import("numpy").attr("asarray")(obj);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw TypeError(std::string(name) + ": expected integer labels, got " + array_desc(a));
  // Unsigned labels past int64 would wrap to negative numbers in the conversion.
  if (kind == 'u' && a.dtype().itemsize() == 8 && a.size() > 0) {
    const py::object largest = a.attr("max")();
    if (largest.cast<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      throw std::invalid_argument(std::string(name) + ": label " + py::str(largest).cast<std::string>() +
                                  " is out of range (labels are class indices 0..C-1)");
  }
  return from_numpy(a, name);
}

Tensor loss_target_arg(const nn::Loss& loss, py::handle obj) {
  switch (loss.target_kind()) {
    case nn::TargetKind::class_labels: return labels_arg(obj, "target");
    case nn::TargetKind::values: break;
  }
  return tensor_arg(obj, "target");
}

bool is_int(py::handle obj) {
  return !py::isinstance<py::bool_>(obj) && !py::isinstance<py::array>(obj) && PyIndex_Check(obj.ptr());
}

namespace {

// obj's value as a Python int (what its __index__ gives); TypeError naming `name` unless is_int.
py::object index_arg(py::handle obj, const char* name) {
  if (!is_int(obj))
    throw TypeError(std::string(name) + ": expected an int, got " + type_name(obj) + " " +
                    py::repr(obj).cast<std::string>());
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();  // its __index__ raised
  return index;
}

}  // namespace

std::int64_t int_arg(py::handle obj, const char* name) {
  const py::object index = index_arg(obj, name);
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0)
    throw std::invalid_argument(std::string(name) + ": " + py::str(index).cast<std::string>() +
                                " does not fit in a 64-bit integer");
  if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

std::uint64_t uint64_arg(py::handle obj, const char* name) {
  const py::object index = index_arg(obj, name);
  const unsigned long long value = PyLong_AsUnsignedLongLong(index.ptr());
  if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw std::invalid_argument(std::string(name) + ": must be in [0, 2**64), got " +
                                py::str(index).cast<std::string>());
  }
  return value;
}

std::vector<std::int64_t> ints_arg(py::handle obj, const char* name) {
  if (py::isinstance<py::bool_>(obj))
    throw TypeError(std::string(name) + ": expected an int or a tuple of ints, got bool");
  if (is_int(obj)) return {int_arg(obj, name)};
  if (py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj) && !py::isinstance<py::bytes>(obj)) {
    std::vector<std::int64_t> values;
    for (auto item : py::reinterpret_borrow<py::sequence>(obj)) {
      if (!is_int(item))
        throw TypeError(std::string(name) + ": expected ints, got " +
                        py::repr(obj).cast<std::string>());
      values.push_back(int_arg(item, name));
    }
    check(!values.empty(), name, ": empty sequence");
    return values;
  }
  throw TypeError(std::string(name) + ": expected an int or a tuple of ints, got " + type_name(obj));
}

PaddingSpec padding_arg(py::handle obj) {
  if (py::isinstance<py::str>(obj)) {
    const auto text = obj.cast<std::string>();
    if (text == "same") return PaddingSpec::same();
    if (text == "valid") return PaddingSpec::valid();
    throw std::invalid_argument("padding: expected an int, a pair, 'same' or 'valid', got '" +
                                text + "'");
  }
  return PaddingSpec::of(ints_arg(obj, "padding"));
}

ConvOptions conv_options(py::handle stride, py::handle padding, py::handle dilation, std::int64_t groups) {
  ConvOptions options;
  options.stride = ints_arg(stride, "stride");
  options.padding = padding_arg(padding);
  options.dilation = ints_arg(dilation, "dilation");
  options.groups = groups;
  return options;
}

PoolOptions pool_options(py::handle kernel_size, py::handle stride, py::handle padding, bool ceil_mode,
                         bool count_include_pad) {
  PoolOptions options;
  options.kernel = ints_arg(kernel_size, "kernel_size");
  if (!stride.is_none()) options.stride = ints_arg(stride, "stride");
  options.padding = ints_arg(padding, "padding");
  options.ceil_mode = ceil_mode;
  options.count_include_pad = count_include_pad;
  return options;
}

// ---- checkpoints ----

namespace {

bool is_mapping(py::handle obj) {
  return py::isinstance(obj, py::module_::import("collections.abc").attr("Mapping"));
}

// The (key, value) pairs of a mapping.
std::vector<std::pair<py::object, py::object>> mapping_items(py::handle mapping) {
  std::vector<std::pair<py::object, py::object>> items;
  for (auto item : mapping.attr("items")()) {
    const auto pair = py::reinterpret_borrow<py::tuple>(item);
    items.emplace_back(pair[0], pair[1]);
  }
  return items;
}

// Float data as for any op, and bfloat16 (ml_dtypes) arrays; integer arrays become int64 (I64),
// except uint64 whose values may not fit. NumPy scalars (what arithmetic on 0-d arrays returns)
// count as 0-d arrays.
Tensor checkpoint_tensor_arg(py::handle value, const std::string& name) {
  if (py::isinstance<Tensor>(value)) return value.cast<Tensor>();
  const py::module_ numpy = py::module_::import("numpy");
  if (py::isinstance(value, numpy.attr("generic")))
    return checkpoint_tensor_arg(numpy.attr("asarray")(value), name);
  if (py::isinstance<py::array>(value)) {
    const auto array = py::reinterpret_borrow<py::array>(value);
    const char kind = array.dtype().kind();
    if (kind == 'u' && array.dtype().itemsize() == 8)
      throw TypeError(name + ": uint64 arrays may not fit int64; convert with .astype(np.int64)");
    if (kind == 'i' || kind == 'u') return labels_arg(value, name.c_str());
    if (is_bfloat16(array.dtype())) return from_numpy(array, name.c_str());
  }
  return tensor_arg(value, name.c_str());
}

}  // namespace

std::vector<NamedTensor> named_tensors_arg(py::handle obj, const char* caller) {
  if (!is_mapping(obj))
    throw TypeError(std::string(caller) + ": tensors must be a dict of name -> tensor, got " + type_name(obj));
  std::vector<NamedTensor> named;
  for (const auto& [key, value] : mapping_items(obj)) {
    if (!py::isinstance<py::str>(key))
      throw TypeError(std::string(caller) + ": tensor names must be str, got " + type_name(key));
    auto name = key.cast<std::string>();
    Tensor tensor = checkpoint_tensor_arg(value, "tensors['" + name + "']");
    named.push_back({std::move(name), std::move(tensor)});
  }
  return named;
}

Metadata metadata_arg(py::handle obj, const char* caller) {
  Metadata metadata;
  if (obj.is_none()) return metadata;
  if (!is_mapping(obj))
    throw TypeError(std::string(caller) + ": metadata must be a dict of str -> str, got " + type_name(obj));
  for (const auto& [key, value] : mapping_items(obj)) {
    if (!py::isinstance<py::str>(key) || !py::isinstance<py::str>(value))
      throw TypeError(std::string(caller) + ": metadata must map str to str, got " +
                      py::repr(key).cast<std::string>() + ": " + py::repr(value).cast<std::string>());
    metadata.emplace_back(key.cast<std::string>(), value.cast<std::string>());
  }
  return metadata;
}

py::dict metadata_dict(const Metadata& metadata) {
  py::dict out;
  for (const auto& [key, value] : metadata) out[py::str(key)] = py::str(value);
  return out;
}

}  // namespace juanji::bind
