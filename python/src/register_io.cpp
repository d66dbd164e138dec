// Checkpoint files: save_safetensors / load_safetensors.
#include <string>
#include <system_error>
#include <utility>

#include "bind_util.hpp"
#include "juanji/checkpoint.hpp"

namespace juanji::bind {
namespace {

std::string type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>();
}

bool is_mapping(py::handle obj) {
  return py::isinstance(obj, py::module_::import("collections.abc").attr("Mapping"));
}

// Float data as for any op; integer arrays become int64 (I64), except uint64 whose values
// may not fit. NumPy scalars (what arithmetic on 0-d arrays returns) count as 0-d arrays.
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
  }
  return tensor_arg(value, name.c_str());
}

std::vector<NamedTensor> tensors_arg(py::handle tensors) {
  if (!is_mapping(tensors))
    throw TypeError("save_safetensors: tensors must be a dict of name -> tensor, got " +
                    type_name(tensors));
  std::vector<NamedTensor> named;
  for (auto item : tensors.attr("items")()) {
    const auto pair = py::reinterpret_borrow<py::tuple>(item);
    if (!py::isinstance<py::str>(pair[0]))
      throw TypeError("save_safetensors: tensor names must be str, got " + type_name(pair[0]));
    auto name = pair[0].cast<std::string>();
    Tensor tensor = checkpoint_tensor_arg(pair[1], "tensors['" + name + "']");
    named.push_back({std::move(name), std::move(tensor)});
  }
  return named;
}

Metadata metadata_arg(py::handle metadata) {
  Metadata result;
  if (metadata.is_none()) return result;
  if (!is_mapping(metadata))
    throw TypeError("save_safetensors: metadata must be a dict of str -> str, got " +
                    type_name(metadata));
  for (auto item : metadata.attr("items")()) {
    const auto pair = py::reinterpret_borrow<py::tuple>(item);
    if (!py::isinstance<py::str>(pair[0]) || !py::isinstance<py::str>(pair[1]))
      throw TypeError("save_safetensors: metadata must map str to str, got " +
                      py::repr(pair[0]).cast<std::string>() + ": " +
                      py::repr(pair[1]).cast<std::string>());
    result.emplace_back(pair[0].cast<std::string>(), pair[1].cast<std::string>());
  }
  return result;
}

}  // namespace

void register_io(py::module_& m) {
  // OSError(errno, text) picks the subclass: FileNotFoundError, PermissionError, ...
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::system_error& e) {
      const py::object error =
          py::reinterpret_borrow<py::object>(PyExc_OSError)(e.code().value(), error_text(e.what()));
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
    }
  });

  m.def(
      "save_safetensors",
      [](py::handle path, py::handle tensors, py::handle metadata) {
        const std::string file = path_arg(path, "path");
        const std::vector<NamedTensor> named = tensors_arg(tensors);
        const Metadata meta = metadata_arg(metadata);
        py::gil_scoped_release release;
        save_safetensors(file, named, meta);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none(),
      R"doc(Write tensors to a checkpoint in the safetensors layout.

path: str, bytes or os.PathLike; written under a temporary name beside it and renamed, so an
existing checkpoint is replaced whole or not at all.
tensors: dict name -> juanji.Tensor or NumPy array, saved in dict order. float32, float64
and int64 tensors keep their dtype; other integer arrays are saved as int64.
metadata: optional dict str -> str, stored as the header's "__metadata__".)doc");

  m.def(
      "load_safetensors",
      [](py::handle path) {
        const std::string file = path_arg(path, "path");
        SafetensorsContents contents;
        {
          py::gil_scoped_release release;
          contents = load_safetensors(file);
        }
        py::dict tensors;
        for (auto& named : contents.tensors)
          tensors[py::str(named.name)] = py::cast(std::move(named.tensor));
        py::dict metadata;
        for (const auto& [key, value] : contents.metadata) metadata[py::str(key)] = py::str(value);
        return py::make_tuple(tensors, metadata);
      },
      py::arg("path"),
      R"doc(Read a safetensors checkpoint (F32, F64 and I64 tensors) into CPU tensors.

Returns (tensors, metadata): dict name -> juanji.Tensor in file order, and the header's
"__metadata__" as dict str -> str. Every size in the header is checked against the file
before any data is read; a malformed or truncated file raises ValueError naming the file and
the entry at fault. A missing or unreadable file raises OSError.)doc");
}

}  // namespace juanji::bind
