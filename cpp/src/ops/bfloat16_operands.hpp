// Functional ops on bfloat16 operands (CPU): each operand widened to float32 (exact), the float32
// op, its results rounded back to bfloat16 — what bfloat16 hardware computes, with float32 sums
// (a product of two bfloat16 is exact in float32).
#pragma once

#include <initializer_list>
#include <utility>

#include "juanji/error.hpp"
#include "juanji/tensor.hpp"

namespace juanji::ops {

struct NamedOperand {
  const char* name;
  const Tensor& tensor;
};

// Whether the op computes in bfloat16: some operand is bfloat16. Then every defined operand must
// be, on the CPU: a mix (with float32 or float64) is a TypeError naming both.
inline bool in_bfloat16(const char* op, std::initializer_list<NamedOperand> operands) {
  const NamedOperand* bf16 = nullptr;
  for (const auto& o : operands)
    if (o.tensor.defined() && o.tensor.dtype() == DType::bfloat16) bf16 = &o;
  if (!bf16) return false;
  for (const auto& o : operands) {
    if (!o.tensor.defined()) continue;
    check_type(o.tensor.dtype() == DType::bfloat16, op, ": ", bf16->name, " is bfloat16 but ", o.name, " is ",
               dtype_name(o.tensor.dtype()), " of shape ", shape_text(o.tensor.shape()),
               "; convert it with .to('bfloat16') (or all of them to float32)");
    check(o.tensor.device().is_cpu(), op, ": bfloat16 runs on the CPU, ", o.name, " is on ",
          o.tensor.device().str());
  }
  return true;
}

inline Tensor widened(const Tensor& t) { return t.defined() ? t.to(DType::float32) : t; }
inline Tensor narrowed(const Tensor& t) { return t.defined() ? t.to(DType::bfloat16) : t; }

}  // namespace juanji::ops
