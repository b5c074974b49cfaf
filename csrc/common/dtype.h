// The element types every pillar moves and reduces. The numbering is part of the wire format of
// later pillars, so new types are appended, never inserted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace pycomm {

enum class DType : std::uint8_t {
  f16 = 0,
  bf16 = 1,
  f32 = 2,
  f64 = 3,
  i8 = 4,
  i16 = 5,
  i32 = 6,
  i64 = 7,
  u8 = 8,
  u16 = 9,
  u32 = 10,
  u64 = 11,
};

inline constexpr int kDTypeCount = 12;

std::size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);
// Accepts the names dtype_name returns ("float32", "bfloat16", "int8", ...); throws InvalidArgument.
DType dtype_from_name(std::string_view name);
bool is_floating(DType dtype);
bool is_signed_integer(DType dtype);

}  // namespace pycomm
