#include "common/dtype.h"

#include <array>

#include "common/error.h"

namespace pycomm {
namespace {

struct DTypeInfo {
  std::string_view name;
  std::size_t size;
};

constexpr std::array<DTypeInfo, kDTypeCount> kInfo = {{
    {"float16", 2},
    {"bfloat16", 2},
    {"float32", 4},
    {"float64", 8},
    {"int8", 1},
    {"int16", 2},
    {"int32", 4},
    {"int64", 8},
    {"uint8", 1},
    {"uint16", 2},
    {"uint32", 4},
    {"uint64", 8},
}};

const DTypeInfo& info(DType dtype) {
  auto index = static_cast<std::size_t>(dtype);
  PYCOMM_ENFORCE(index < kInfo.size(), "unknown dtype code ", index);
  return kInfo[index];
}

}  // namespace

std::size_t dtype_size(DType dtype) { return info(dtype).size; }

std::string_view dtype_name(DType dtype) { return info(dtype).name; }

DType dtype_from_name(std::string_view name) {
  for (std::size_t i = 0; i < kInfo.size(); ++i) {
    if (kInfo[i].name == name) return static_cast<DType>(i);
  }
  PYCOMM_THROW(InvalidArgument, "unsupported dtype '", name,
               "'; supported: float16, bfloat16, float32, float64, int8/16/32/64, uint8/16/32/64");
}

bool is_floating(DType dtype) { return dtype <= DType::f64; }

bool is_signed_integer(DType dtype) { return dtype >= DType::i8 && dtype <= DType::i64; }

}  // namespace pycomm
