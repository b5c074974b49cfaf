// How each storage type is computed on: half types widen to float for every operation and round
// once when stored; integers compute in their own width with wrap-around (as numpy does), which
// for signed types is done in unsigned arithmetic so overflow is defined.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/dtype.h"
#include "common/half.h"

namespace pycomm::kernels {
// Internal linkage: each instruction-set build of the kernels gets its own copy (see half.h).
namespace {

template <typename T>
struct Element {
  using Compute = T;
  static Compute load(T value) { return value; }
  static T store(Compute value) { return value; }
};

template <>
struct Element<Half> {
  using Compute = float;
  static float load(Half value) { return half_to_float(value); }
  static Half store(float value) { return float_to_half(value); }
};

template <>
struct Element<BFloat16> {
  using Compute = float;
  static float load(BFloat16 value) { return bfloat16_to_float(value); }
  static BFloat16 store(float value) { return float_to_bfloat16(value); }
};

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls visitor(TypeTag<T>{}) with the storage type of `dtype`. Callers validate `dtype` first:
// this is used inside the per-instruction-set kernels, which must not throw (an exception path
// instantiates library templates that the linker could share between instruction sets).
template <typename Visitor>
void visit_dtype(DType dtype, Visitor&& visitor) {
  switch (dtype) {
    case DType::f16: visitor(TypeTag<Half>{}); return;
    case DType::bf16: visitor(TypeTag<BFloat16>{}); return;
    case DType::f32: visitor(TypeTag<float>{}); return;
    case DType::f64: visitor(TypeTag<double>{}); return;
    case DType::i8: visitor(TypeTag<std::int8_t>{}); return;
    case DType::i16: visitor(TypeTag<std::int16_t>{}); return;
    case DType::i32: visitor(TypeTag<std::int32_t>{}); return;
    case DType::i64: visitor(TypeTag<std::int64_t>{}); return;
    case DType::u8: visitor(TypeTag<std::uint8_t>{}); return;
    case DType::u16: visitor(TypeTag<std::uint16_t>{}); return;
    case DType::u32: visitor(TypeTag<std::uint32_t>{}); return;
    case DType::u64: visitor(TypeTag<std::uint64_t>{}); return;
  }
}

template <typename T>
T wrapping_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
  } else {
    return a + b;
  }
}

template <typename T>
T wrapping_multiply(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    // Promote to at least unsigned int so that uint16 * uint16 does not overflow a signed int.
    using U = std::common_type_t<std::make_unsigned_t<T>, unsigned int>;
    return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return a * b;
  }
}

// numpy's rules: a NaN in either operand wins; on a tie the first operand is kept.
template <typename T>
T minimum(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    return (a <= b || a != a) ? a : b;
  } else {
    return a <= b ? a : b;
  }
}

template <typename T>
T maximum(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    return (a >= b || a != a) ? a : b;
  } else {
    return a >= b ? a : b;
  }
}

}  // namespace
}  // namespace pycomm::kernels
