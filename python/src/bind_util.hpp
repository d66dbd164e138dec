// Conversions shared by the register_*.cpp files: Python objects to juanji arguments.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "juanji/checkpoint.hpp"
#include "juanji/nn/sequential.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/ops/pool.hpp"
#include "juanji/tensor.hpp"

namespace juanji::bind {

namespace py = pybind11;

// A juanji Tensor as is, or a NumPy array / nested sequence as a float tensor: C-contiguous
// float32/float64 arrays are wrapped without copying, other layouts copied. Integer, bool,
// complex, object and string arrays raise TypeError naming `name`; Python sequences of ints
// become float32.
Tensor tensor_arg(py::handle obj, const char* name);
// Like tensor_arg, but None gives an undefined Tensor (an absent optional argument).
Tensor optional_tensor_arg(py::handle obj, const char* name);
// Integer class labels as an int64 tensor: a juanji int64 Tensor or any integer array/sequence.
Tensor labels_arg(py::handle obj, const char* name);
// The target `loss` takes (see nn::TargetKind): labels_arg or tensor_arg, named "target".
Tensor loss_target_arg(const nn::Loss& loss, py::handle obj);
// A checkpoint's tensors: a mapping of str names to tensors, in its order. Float data as for
// any op; integer arrays become int64, except uint64 whose values may not fit. TypeError naming
// `caller` for anything else.
std::vector<NamedTensor> named_tensors_arg(py::handle obj, const char* caller);
// Whether obj is a Python int or a NumPy integer scalar (anything with __index__ but a bool or an
// array).
bool is_int(py::handle obj);
// A Python int or a NumPy integer scalar (bool is not an int here): TypeError naming `name`
// otherwise, ValueError naming it outside int64.
std::int64_t int_arg(py::handle obj, const char* name);
// Like int_arg, for the range [0, 2**64) (random seeds).
std::uint64_t uint64_arg(py::handle obj, const char* name);
// An int or a sequence of ints, as given (length checked by the op).
std::vector<std::int64_t> ints_arg(py::handle obj, const char* name);
// An int, a sequence of ints, "same" or "valid".
PaddingSpec padding_arg(py::handle obj);
ConvOptions conv_options(py::handle stride, py::handle padding, py::handle dilation, std::int64_t groups);
// stride None means "equal to the kernel".
PoolOptions pool_options(py::handle kernel_size, py::handle stride, py::handle padding, bool ceil_mode,
                         bool count_include_pad);

// A file path taken as Python's open() takes it: str, bytes or os.PathLike, as the bytes
// os.fsencode(os.fspath(obj)) gives. Anything else is a TypeError, a path with a NUL character
// (which the C library would silently cut there) a ValueError, each naming `name`.
std::string path_arg(py::handle obj, const char* name);

// Checkpoint metadata: a mapping of str to str, in its order (None: none). Anything else is a
// TypeError naming `caller`.
Metadata metadata_arg(py::handle obj, const char* caller);
// Metadata as a dict str -> str, in file order.
py::dict metadata_dict(const Metadata& metadata);

// None: the CPU; else the device its str() names ("cpu", "cuda", "cuda:N").
Device device_arg(py::handle obj);
// What to() takes: a device as for device_arg when str() of obj names one, else a dtype.
std::variant<Device, DType> device_or_dtype_arg(py::handle obj);

// The name of obj's type, for error messages.
std::string type_name(py::handle obj);

// An exception's message as str. It may quote a path given as bytes that are not UTF-8: those
// show as \xNN escapes, where decoding strictly would raise UnicodeDecodeError instead.
py::str error_text(const char* what);

// None not accepted; "float32", np.float64, "bfloat16", ml_dtypes.bfloat16, ...
DType dtype_arg(py::handle obj, const char* name);
// The NumPy dtype of a juanji dtype; bfloat16's is ml_dtypes.bfloat16, whose absence raises
// ImportError saying so.
py::dtype numpy_dtype(DType dtype);
// Whether dt is ml_dtypes.bfloat16 (without importing ml_dtypes).
bool is_bfloat16(const py::dtype& dt);
// NumPy view of a CPU tensor that keeps `owner` (the Python Tensor) alive: no copy.
py::array to_numpy(const Tensor& t, py::handle owner);
// Wraps a NumPy array (float32, float64, ml_dtypes.bfloat16, or integers as int64): zero-copy
// when C-contiguous, aligned and native (a read-only array gives a read-only tensor), else a copy.
Tensor from_numpy(py::array array, const char* name);

}  // namespace juanji::bind
