// Checkpoint files, every function that reads or writes one by path: save_safetensors,
// load_safetensors, and the model loaders (Sequential.save, a method, is with the class).
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "bind_util.hpp"
#include "juanji/checkpoint.hpp"
#include "juanji/nn/sequential.hpp"

namespace juanji::bind {
namespace {

// The model a checkpoint holds, and into `metadata` (when not null) the user metadata it was saved
// with, from one reading of the file.
std::shared_ptr<nn::Sequential> load_model(py::handle path, Metadata* metadata) {
  const std::string file = path_arg(path, "path");
  py::gil_scoped_release release;
  return nn::Sequential::load(file, metadata);
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
        const std::vector<NamedTensor> named = named_tensors_arg(tensors, "save_safetensors");
        const Metadata meta = metadata_arg(metadata, "save_safetensors");
        py::gil_scoped_release release;
        save_safetensors(file, named, meta);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none(),
      R"doc(Write tensors to a checkpoint in the safetensors layout.

path: str, bytes or os.PathLike; written under a temporary name beside it and renamed, so an
existing checkpoint is replaced whole or not at all.
tensors: dict name -> juanji.Tensor or NumPy array, saved in dict order. float32, float64,
bfloat16 (BF16; ml_dtypes.bfloat16 arrays too) and int64 tensors keep their dtype; other
integer arrays are saved as int64.
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
        return py::make_tuple(tensors, metadata_dict(contents.metadata));
      },
      py::arg("path"),
      R"doc(Read a safetensors checkpoint (F32, F64, BF16 and I64 tensors) into CPU tensors.

Returns (tensors, metadata): dict name -> juanji.Tensor in file order, and the header's
"__metadata__" as dict str -> str. Every size in the header is checked against the file
before any data is read; a malformed or truncated file raises ValueError naming the file and
the entry at fault. A missing or unreadable file raises OSError.)doc");

  m.def("load", [](py::handle path) { return load_model(path, nullptr); }, py::arg("path"),
        "Rebuilds a model saved with Sequential.save; corrupt or mismatched files raise ValueError.");
  m.def(
      "load_with_metadata",
      [](py::handle path) {
        Metadata metadata;
        auto model = load_model(path, &metadata);
        return py::make_tuple(std::move(model), metadata_dict(metadata));
      },
      py::arg("path"),
      "(load(path), load_metadata(path)) from one reading of the file: what a caller that needs "
      "both uses, so that the two cannot come from different files.");
  m.def(
      "load_metadata",
      [](py::handle path) {
        const std::string file = path_arg(path, "path");
        Metadata metadata;
        {
          py::gil_scoped_release release;
          metadata = nn::Sequential::load_metadata(file);
        }
        return metadata_dict(metadata);
      },
      py::arg("path"), "The user metadata a model checkpoint was saved with (read from its header alone).");
}

}  // namespace juanji::bind
