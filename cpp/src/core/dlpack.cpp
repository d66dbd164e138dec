#include "juanji/dlpack.hpp"

#include <memory>
#include <string>
#include <vector>

namespace juanji {
namespace {

// Owns what a DLTensor points at: a reference to the tensor plus its shape and strides arrays.
struct ExportContext {
  Tensor tensor;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;
};

std::uint8_t dlpack_type_code(DType dtype) {
  switch (dtype) {
    case DType::float32:
    case DType::float64: return kDLFloat;
    case DType::int64: return kDLInt;
    case DType::bfloat16: return kDLBfloat;
  }
  throw std::logic_error("to_dlpack: no DLPack type code for this dtype");
}

DLTensor describe(ExportContext& ctx) {
  const Tensor& t = ctx.tensor;
  DLTensor dl{};
  dl.data = t.storage()->data;
  dl.byte_offset = static_cast<std::uint64_t>(t.offset()) * dtype_size(t.dtype());
  dl.device = {t.device().is_cpu() ? kDLCPU : kDLCUDA, t.device().is_cpu() ? 0 : t.device().index};
  dl.ndim = static_cast<std::int32_t>(t.dim());
  dl.dtype = {dlpack_type_code(t.dtype()), static_cast<std::uint8_t>(8 * dtype_size(t.dtype())), 1};
  dl.shape = ctx.shape.data();
  dl.strides = ctx.strides.data();
  return dl;
}

// The DLPack dtype's usual name ("bfloat16", "uint8", "complex64"), for messages.
std::string dtype_text(const DLDataType& dt) {
  const char* kind = nullptr;
  switch (dt.code) {
    case kDLInt: kind = "int"; break;
    case kDLUInt: kind = "uint"; break;
    case kDLFloat: kind = "float"; break;
    case kDLBfloat: kind = "bfloat"; break;
    case kDLComplex: kind = "complex"; break;
    case kDLBool: return "bool";
  }
  if (!kind) return detail::concat("DLPack type code ", int(dt.code), " of ", int(dt.bits), " bits");
  return detail::concat(kind, int(dt.bits));
}

DType dtype_from(const DLDataType& dt) {
  check_type(dt.lanes == 1, "from_dlpack: x has vectors of ", int(dt.lanes), " ", dtype_text(dt),
             " per element; juanji holds scalars only");
  if (dt.code == kDLFloat && dt.bits == 32) return DType::float32;
  if (dt.code == kDLFloat && dt.bits == 64) return DType::float64;
  if (dt.code == kDLInt && dt.bits == 64) return DType::int64;
  if (dt.code == kDLBfloat && dt.bits == 16) return DType::bfloat16;
  throw TypeError(detail::concat("from_dlpack: x has dtype ", dtype_text(dt),
                                 "; juanji holds float32, float64, bfloat16 and int64 (convert it first)"));
}

const char* device_text(std::int32_t type) {
  switch (type) {
    case 4: return "OpenCL";
    case 7: return "Vulkan";
    case 8: return "Metal";
    case 10: return "ROCm";
    case 11: return "ROCm host";
    case 14: return "oneAPI";
    case 15: return "WebGPU";
    case 16: return "Hexagon";
    default: return "an unknown device";
  }
}

Device device_from(const DLDevice& dev) {
  if (dev.device_type == kDLCPU || dev.device_type == kDLCUDAHost) return {DeviceType::cpu, 0};
  if (dev.device_type == kDLCUDA || dev.device_type == kDLCUDAManaged)
    return {DeviceType::cuda, dev.device_id};
  throw std::invalid_argument(detail::concat("from_dlpack: x is on ", device_text(dev.device_type),
                                             " (DLPack device type ", int(dev.device_type),
                                             "); juanji takes CPU and CUDA memory"));
}

Tensor wrap(const DLTensor& dl, std::shared_ptr<void> owner, bool read_only) {
  check(dl.ndim >= 0, "from_dlpack: negative ndim ", dl.ndim);
  const DType dtype = dtype_from(dl.dtype);
  Shape shape(dl.shape, dl.shape + dl.ndim);
  Shape strides = dl.strides ? Shape(dl.strides, dl.strides + dl.ndim) : contiguous_strides(shape);
  check(dl.byte_offset % dtype_size(dtype) == 0, "from_dlpack: byte_offset ", dl.byte_offset,
        " is not a multiple of the element size");
  void* data = static_cast<char*>(dl.data) + dl.byte_offset;
  return Tensor::from_blob(data, shape, strides, dtype, device_from(dl.device), std::move(owner), read_only);
}

template <class Managed>
Managed* export_tensor(const Tensor& tensor) {
  check_defined(tensor, "to_dlpack");
  auto ctx = std::make_unique<ExportContext>();
  ctx->tensor = tensor;
  ctx->shape = tensor.shape();
  ctx->strides = tensor.strides();
  auto managed = std::make_unique<Managed>();
  managed->dl_tensor = describe(*ctx);
  managed->manager_ctx = ctx.release();
  managed->deleter = [](Managed* self) {
    delete static_cast<ExportContext*>(self->manager_ctx);
    delete self;
  };
  return managed.release();
}

}  // namespace

DLManagedTensor* to_dlpack(const Tensor& tensor) { return export_tensor<DLManagedTensor>(tensor); }

DLManagedTensorVersioned* to_dlpack_versioned(const Tensor& tensor) {
  auto* managed = export_tensor<DLManagedTensorVersioned>(tensor);
  managed->version = {1, 0};
  managed->flags = tensor.is_read_only() ? kDLPackFlagReadOnly : 0;
  return managed;
}

Tensor from_dlpack(DLManagedTensor* managed) {
  check(managed != nullptr, "from_dlpack: null DLManagedTensor");
  std::shared_ptr<void> owner(managed, [](void* p) {
    auto* m = static_cast<DLManagedTensor*>(p);
    if (m->deleter) m->deleter(m);
  });
  return wrap(managed->dl_tensor, std::move(owner), false);
}

Tensor from_dlpack(DLManagedTensorVersioned* managed) {
  check(managed != nullptr, "from_dlpack: null DLManagedTensorVersioned");
  std::shared_ptr<void> owner(managed, [](void* p) {
    auto* m = static_cast<DLManagedTensorVersioned*>(p);
    if (m->deleter) m->deleter(m);
  });
  check(managed->version.major == 1, "from_dlpack: DLPack major version ", managed->version.major,
        " is not supported (expected 1)");
  return wrap(managed->dl_tensor, std::move(owner), (managed->flags & kDLPackFlagReadOnly) != 0);
}

}  // namespace juanji
