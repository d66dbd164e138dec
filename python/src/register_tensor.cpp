// juanji.Tensor, factories, DLPack, random numbers and run-time configuration.
#include <pybind11/stl.h>

#include <cstring>
#include <variant>

#include "bind_util.hpp"
#include "juanji/dlpack.hpp"
#include "juanji/runtime.hpp"
#include "juanji/selftest.hpp"

namespace juanji::bind {
namespace {

constexpr const char* kLegacyCapsule = "dltensor";
constexpr const char* kVersionedCapsule = "dltensor_versioned";
constexpr const char* kUsedLegacyCapsule = "used_dltensor";
constexpr const char* kUsedVersionedCapsule = "used_dltensor_versioned";

Shape shape_arg(py::handle obj) { return ints_arg(obj, "shape"); }

// zeros(2, 3) or zeros((2, 3)).
Shape shape_from_args(const py::args& args) {
  if (args.size() == 1) return shape_arg(args[0]);
  Shape shape;
  for (auto a : args) shape.push_back(int_arg(a, "shape"));
  return shape;
}

DType optional_dtype(py::handle obj, DType fallback) {
  return obj.is_none() ? fallback : dtype_arg(obj, "dtype");
}

py::capsule export_capsule(const Tensor& t, bool versioned) {
  if (versioned) {
    return py::capsule(to_dlpack_versioned(t), kVersionedCapsule, [](PyObject* cap) {
      // An unconsumed capsule still owns the tensor; a consumer renames it to "used_...".
      if (PyCapsule_IsValid(cap, kVersionedCapsule)) {
        auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, kVersionedCapsule));
        if (m && m->deleter) m->deleter(m);
      }
    });
  }
  return py::capsule(to_dlpack(t), kLegacyCapsule, [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, kLegacyCapsule)) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, kLegacyCapsule));
      if (m && m->deleter) m->deleter(m);
    }
  });
}

Tensor import_capsule(py::capsule cap) {
  PyObject* raw = cap.ptr();
  if (PyCapsule_IsValid(raw, kVersionedCapsule)) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(raw, kVersionedCapsule));
    PyCapsule_SetName(raw, kUsedVersionedCapsule);
    return from_dlpack(m);
  }
  if (PyCapsule_IsValid(raw, kLegacyCapsule)) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(raw, kLegacyCapsule));
    PyCapsule_SetName(raw, kUsedLegacyCapsule);
    return from_dlpack(m);
  }
  throw TypeError("from_dlpack: the capsule is not an unconsumed DLPack tensor");
}

Tensor from_dlpack_object(py::object obj) {
  if (py::isinstance<py::capsule>(obj)) return import_capsule(obj);
  if (!py::hasattr(obj, "__dlpack__"))
    throw TypeError("from_dlpack: x must support __dlpack__, got " + type_name(obj));
  py::object capsule;
  try {
    capsule = obj.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    capsule = obj.attr("__dlpack__")();  // a producer older than DLPack 1.0
  }
  return import_capsule(capsule);
}

py::tuple shape_tuple(const Shape& shape) {
  py::tuple out(shape.size());
  for (std::size_t i = 0; i < shape.size(); ++i) out[i] = shape[i];
  return out;
}

// NumPy's basic indexing: ints (Python or NumPy), slices with positive steps, None and a bool
// (a new axis of size 1, or 0 for False) and one Ellipsis. Results are views.
Tensor index_tensor(const Tensor& t, py::handle key) {
  py::tuple keys = py::isinstance<py::tuple>(key) ? py::reinterpret_borrow<py::tuple>(key)
                                                   : py::make_tuple(key);
  std::int64_t consumed = 0, ellipses = 0;
  for (auto k : keys) {
    if (py::isinstance<py::slice>(k) || is_int(k)) ++consumed;
    if (k.is(py::ellipsis())) ++ellipses;
  }
  check(ellipses <= 1, "index: an index can only have a single ellipsis ('...')");
  check(consumed <= t.dim(), "index: too many indices (", consumed, ") for a tensor of shape ",
        shape_text(t.shape()));
  Tensor out = t;
  std::int64_t dim = 0;
  for (auto k : keys) {
    if (k.is(py::ellipsis())) {
      dim += t.dim() - consumed;
    } else if (k.is_none() || py::isinstance<py::bool_>(k)) {
      out = out.unsqueeze(dim);
      if (k.ptr() == Py_False) out = out.slice(dim, 0, 0);
      ++dim;
    } else if (py::isinstance<py::slice>(k)) {
      py::ssize_t start, stop, step, length;
      if (!py::reinterpret_borrow<py::slice>(k).compute(out.size(dim), &start, &stop, &step, &length))
        throw py::error_already_set();
      check(step > 0, "index: negative slice steps are not supported");
      out = out.slice(dim, start, stop, step);
      ++dim;
    } else if (is_int(k)) {
      const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(k.ptr()));
      if (!index) throw py::error_already_set();  // its __index__ raised
      const std::int64_t n = out.size(dim);
      const long long value = PyLong_AsLongLong(index.ptr());
      if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::index_error("index " + py::str(index).cast<std::string>() + " is out of bounds for dim " +
                              std::to_string(dim) + " of size " + std::to_string(n));
      }
      if (value < -n || value >= n)
        throw py::index_error("index " + std::to_string(value) + " is out of bounds for dim " +
                              std::to_string(dim) + " of size " + std::to_string(n));
      out = out.select(dim, value);
    } else {
      throw TypeError("index: only ints, slices, None, a bool and '...' are supported, got " +
                      py::repr(k).cast<std::string>());
    }
  }
  return out;
}

}  // namespace

void register_tensor(py::module_& m) {
  py::class_<Tensor>(m, "Tensor", py::buffer_protocol(), R"doc(
An n-d float32/float64/bfloat16/int64 array on the CPU or a CUDA device, backed by shared 64-byte
aligned storage. Views (reshape, slicing, transpose) share storage. On the CPU it exports the
buffer protocol and __array__, so np.asarray(t) and t.numpy() are zero-copy (bfloat16 tensors
through __array__ alone, as ml_dtypes.bfloat16 arrays); __dlpack__ trades it with PyTorch, JAX
or CuPy without copies.)doc")
      .def_buffer([](Tensor& t) -> py::buffer_info {
        check(t.device().is_cpu(), "buffer: tensor is on ", t.device().str(), "; use .to('cpu')");
        // The buffer protocol has no bfloat16 format; NumPy then asks __array__.
        if (t.dtype() == DType::bfloat16)
          throw py::buffer_error("buffer: bfloat16 has no buffer-protocol format; use np.asarray(t) or t.numpy()");
        std::vector<py::ssize_t> strides;
        for (auto s : t.strides()) strides.push_back(static_cast<py::ssize_t>(s * dtype_size(t.dtype())));
        const std::string format = t.dtype() == DType::float32   ? py::format_descriptor<float>::format()
                                   : t.dtype() == DType::float64 ? py::format_descriptor<double>::format()
                                                                 : py::format_descriptor<std::int64_t>::format();
        return py::buffer_info(t.data_ptr(), static_cast<py::ssize_t>(dtype_size(t.dtype())), format,
                               t.dim(), std::vector<py::ssize_t>(t.shape().begin(), t.shape().end()),
                               strides, t.is_read_only());
      })
      .def_property_readonly("shape", [](const Tensor& t) { return shape_tuple(t.shape()); })
      .def_property_readonly("strides", [](const Tensor& t) { return shape_tuple(t.strides()); },
                             "Strides in elements (NumPy's are in bytes).")
      .def_property_readonly("dtype", [](const Tensor& t) { return numpy_dtype(t.dtype()); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("ndim", &Tensor::dim)
      .def("numel", &Tensor::numel)
      .def("__len__", [](const Tensor& t) {
        check(t.dim() > 0, "len() of a 0-d tensor");
        return t.size(0);
      })
      .def("is_contiguous", &Tensor::is_contiguous)
      .def("numpy", [](py::object self) { return to_numpy(self.cast<const Tensor&>(), self); },
           "A NumPy array sharing this tensor's memory (no copy); CPU tensors only. bfloat16 gives "
           "an ml_dtypes.bfloat16 array (ImportError without ml_dtypes).")
      .def("__array__",
           [](py::object self, py::object dtype, py::object copy) {
             py::array a = to_numpy(self.cast<const Tensor&>(), self);
             if (!dtype.is_none()) return py::array(a.attr("astype")(dtype));
             if (!copy.is_none() && copy.cast<bool>()) return py::array(a.attr("copy")());
             return a;
           },
           py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack__",
           [](const Tensor& t, py::object stream, py::object max_version, py::object dl_device,
              py::object copy) {
             (void)stream;
             (void)dl_device;
             check(copy.is_none() || !copy.cast<bool>(), "__dlpack__: copy=True is not supported");
             const bool versioned = !max_version.is_none() &&
                                    max_version.cast<py::tuple>()[0].cast<int>() >= 1;
             // A consumer of the old, unversioned form cannot be told the memory is read-only.
             if (!versioned && t.is_read_only())
               throw py::buffer_error("__dlpack__: the tensor is read-only memory, which DLPack before 1.0 "
                                      "cannot mark; ask for max_version=(1, 0) or clone() it first");
             return export_capsule(t, versioned);
           },
           py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
           py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const Tensor& t) {
             return py::make_tuple(t.device().is_cpu() ? int(kDLCPU) : int(kDLCUDA),
                                   t.device().is_cpu() ? 0 : t.device().index);
           })
      .def("reshape",
           [](const Tensor& t, py::args args) { return t.reshape(shape_from_args(args)); })
      .def("transpose",
           [](const Tensor& t, py::handle dim0, py::handle dim1) {
             return t.transpose(int_arg(dim0, "dim0"), int_arg(dim1, "dim1"));
           },
           py::arg("dim0"), py::arg("dim1"))
      .def("permute", [](const Tensor& t, py::args args) { return t.permute(shape_from_args(args)); })
      .def_property_readonly("T", [](const Tensor& t) {
        std::vector<std::int64_t> order(t.dim());
        for (std::int64_t i = 0; i < t.dim(); ++i) order[i] = t.dim() - 1 - i;
        return t.permute(order);
      })
      .def("__getitem__", &index_tensor)
      .def("contiguous", &Tensor::contiguous)
      .def("clone", &Tensor::clone)
      .def("to", [](const Tensor& t, py::object target) {
             return std::visit([&](auto device_or_dtype) { return t.to(device_or_dtype); },
                               device_or_dtype_arg(target));
           }, py::arg("target"),
           "to('cpu'|'cuda'|'cuda:N') moves; to('float64') converts (to 'bfloat16': rounded to nearest even).")
      .def("astype", [](const Tensor& t, py::object dtype) { return t.to(dtype_arg(dtype, "dtype")); })
      .def("fill_", [](Tensor& t, double v) { t.fill_(v); return t; })
      .def("item", &Tensor::item)
      .def("__repr__", [](py::object self) {
        const Tensor& t = self.cast<const Tensor&>();
        std::string head = t.repr();
        if (!t.device().is_cpu() || t.numel() > 1000) return head;
        try {
          return head + "\n" + py::repr(to_numpy(t, self)).cast<std::string>();
        } catch (const py::import_error&) {
          return head;  // a bfloat16 tensor without ml_dtypes to show its values
        }
      });

  m.def("tensor",
        [](py::object data, py::object dtype, py::object device) {
          Tensor src;
          if (py::isinstance<Tensor>(data)) {
            src = data.cast<Tensor>();
          } else {
            py::array a = py::module_::import("numpy").attr("asarray")(data);
            const char kind = a.dtype().kind();
            const bool numbers = kind == 'i' || kind == 'u' || kind == 'b' || kind == 'f';
            if (dtype.is_none() && !py::isinstance<py::array>(data) && numbers)
              a = py::module_::import("numpy").attr("asarray")(data, py::dtype::of<float>());
            else if (!dtype.is_none() && numbers && dtype_arg(dtype, "dtype") == DType::bfloat16)
              // Rounded by the clone's to() below, so ml_dtypes is not needed; float64 holds
              // every float16, float32 and bool exactly.
              a = a.attr("astype")(py::dtype::of<double>());
            else if (!dtype.is_none() && numbers)
              a = a.attr("astype")(numpy_dtype(dtype_arg(dtype, "dtype")));
            const bool taken = a.dtype().kind() == 'f' || (a.dtype().kind() == 'i' && !dtype.is_none()) ||
                               is_bfloat16(a.dtype());
            if (!taken)
              throw TypeError("data: expected real numbers, got an array of dtype " +
                              py::str(a.dtype()).cast<std::string>() +
                              (a.dtype().kind() == 'i' ? " (pass dtype= to convert integers)" : ""));
            src = from_numpy(a, "data");
          }
          Tensor out = src.clone().to(optional_dtype(dtype, src.dtype()));
          return out.to(device_arg(device));
        },
        py::arg("data"), py::arg("dtype") = py::none(), py::arg("device") = py::none(),
        "A new tensor holding a copy of data (a sequence, NumPy array or Tensor). Python ints "
        "and floats give float32 unless dtype says otherwise; integer NumPy arrays need dtype=.");
  m.def("from_numpy", [](py::array a) { return from_numpy(a, "a"); }, py::arg("a"),
        "Wraps a NumPy array. C-contiguous, aligned float32/float64/ml_dtypes.bfloat16 arrays are "
        "shared without copying (writes show on both sides; a read-only array gives a read-only "
        "tensor); other layouts (Fortran order, slices, byte-swapped arrays) are copied.");
  m.def("from_dlpack", &from_dlpack_object, py::arg("x"),
        "Imports any object with __dlpack__ (PyTorch, NumPy, JAX, CuPy) or a DLPack capsule "
        "without copying.");

  auto factory = [&m](const char* name, double value, const char* doc) {
    m.def(name,
          [value](py::args shape, py::object dtype, py::object device) {
            return Tensor::full(shape_from_args(shape), value, optional_dtype(dtype, DType::float32),
                                device_arg(device));
          },
          py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none(), doc);
  };
  factory("zeros", 0.0, "zeros(*shape, dtype=None, device=None)");
  factory("ones", 1.0, "ones(*shape, dtype=None, device=None)");
  m.def("empty",
        [](py::args shape, py::object dtype, py::object device) {
          return Tensor::empty(shape_from_args(shape), optional_dtype(dtype, DType::float32),
                               device_arg(device));
        },
        py::kw_only(), py::arg("dtype") = py::none(), py::arg("device") = py::none());
  m.def("full",
        [](py::object shape, double value, py::object dtype, py::object device) {
          return Tensor::full(shape_arg(shape), value, optional_dtype(dtype, DType::float32),
                              device_arg(device));
        },
        py::arg("shape"), py::arg("fill_value"), py::arg("dtype") = py::none(),
        py::arg("device") = py::none());
  m.def("arange",
        [](double start, py::object stop, double step, py::object dtype) {
          if (stop.is_none()) return Tensor::arange(0, start, step, optional_dtype(dtype, DType::float32));
          return Tensor::arange(start, stop.cast<double>(), step, optional_dtype(dtype, DType::float32));
        },
        py::arg("start"), py::arg("stop") = py::none(), py::arg("step") = 1.0,
        py::arg("dtype") = py::none());
  m.def("rand",
        [](py::args shape, py::object dtype) {
          return rand(shape_from_args(shape), optional_dtype(dtype, DType::float32));
        },
        py::kw_only(), py::arg("dtype") = py::none(), "Uniform [0, 1) from the seeded generator; in bfloat16 the float32 draws truncated (rounding could give 1).");
  m.def("randn",
        [](py::args shape, py::object dtype) {
          return randn(shape_from_args(shape), optional_dtype(dtype, DType::float32));
        },
        py::kw_only(), py::arg("dtype") = py::none(), "Standard normal from the seeded generator; in bfloat16 the float64 draws rounded to nearest.");
  m.def("manual_seed",
        [](py::handle seed) { manual_seed(uint64_arg(seed, "seed")); },
        py::arg("seed"),
        "Seeds the one generator behind rand, randn, dropout and initialisation.");

  m.def("version", &version);
  m.def("config_string", &config_string);
  m.def("set_num_threads", [](py::handle n) { set_num_threads(int_arg(n, "n")); }, py::arg("n"),
        "Threads of every parallel region, process-wide: 1 to 4 per hardware thread (at least 64).");
  m.def("get_num_threads", &get_num_threads);
  m.def("simd_level", [] { return std::string(simd_name(simd_level())); });
  m.def("simd_detected", [] { return std::string(simd_name(simd_detected())); });
  m.def("set_simd_level",
        [](const std::string& level) {
          SimdLevel wanted;
          if (level == "portable") wanted = SimdLevel::portable;
          else if (level == "avx2") wanted = SimdLevel::avx2;
          else if (level == "avx512") wanted = SimdLevel::avx512;
          else throw std::invalid_argument("level: expected portable, avx2 or avx512, got '" + level + "'");
          return std::string(simd_name(set_simd_level(wanted)));
        },
        py::arg("level"), "Caps the SIMD level (never above the detected one); returns the one in use.");
  m.def("winograd_enabled", &winograd_enabled);
  m.def("set_winograd", &set_winograd, py::arg("enabled"),
        "Turns Winograd F(2x2, 3x3) for stride-1 3x3 float32 CPU convolutions on or off; returns the previous setting.");
  m.def("storage_allocations", &storage_allocations,
        "Tensor storages that took fresh memory so far (a CPU block that an earlier tensor gave back does "
        "not count); a training step after the first adds none.");
  py::class_<SelftestRow>(m, "SelftestRow",
                          "One op at one SIMD level in selftest_rows(): its worst error (the difference from the "
                          "reference over the size of the terms behind the reference's value), the tolerance "
                          "it was held to (0: bit for bit), whether it passed, and the first failed check "
                          "(failure, empty if ok).")
      .def_readonly("op", &SelftestRow::op)
      .def_readonly("level", &SelftestRow::level)
      .def_readonly("max_error", &SelftestRow::max_error)
      .def_readonly("tolerance", &SelftestRow::tolerance)
      .def_readonly("ok", &SelftestRow::ok)
      .def_readonly("failure", &SelftestRow::failure)
      .def("__repr__", [](const SelftestRow& r) {
        return "SelftestRow(op=" + py::repr(py::str(r.op)).cast<std::string>() + ", level='" + r.level +
               "', max_error=" + py::repr(py::float_(r.max_error)).cast<std::string>() +
               ", tolerance=" + py::repr(py::float_(r.tolerance)).cast<std::string>() +
               ", ok=" + (r.ok ? "True" : "False") + ")";
      });
  m.def(
      "selftest_rows",
      [] {
        py::gil_scoped_release release;
        return run_selftest();
      },
      "Runs every op forward and backward against the plain-loop references at every SIMD level this CPU has "
      "(see juanji.selftest, which prints them) and returns a row per op and level. Changes the SIMD level, "
      "the thread count, the forced convolution algorithms and the Winograd setting while it runs, and "
      "restores them.");
  m.def("cuda_compiled", &cuda_compiled);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_synchronize",
        [](int device) {
          py::gil_scoped_release release;
          cuda_synchronize(device);
        },
        py::arg("device") = 0,
        "Waits for the GPU's queued work (for timing); ValueError without CUDA or a visible GPU.");
}

}  // namespace juanji::bind
