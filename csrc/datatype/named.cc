#include "datatype/named.h"

#include <cstddef>
#include <cstdint>
#include <map>

namespace pycomm::datatype {
namespace {

struct Scalar {
  const char* name;
  std::int64_t size;
  std::int64_t alignment;
  const char* kind;  // MPICH's element class: integers of one width share one, whatever their sign
};

template <typename T>
constexpr Scalar scalar(const char* name, const char* kind) {
  return Scalar{name, static_cast<std::int64_t>(sizeof(T)), static_cast<std::int64_t>(alignof(T)), kind};
}

// Complex numbers align like their parts.
template <typename Part>
constexpr Scalar complex_of(const char* name, const char* kind) {
  return Scalar{name, static_cast<std::int64_t>(2 * sizeof(Part)), static_cast<std::int64_t>(alignof(Part)), kind};
}

const Scalar kScalars[] = {
    scalar<unsigned char>("BYTE", "fixed8"),
    scalar<unsigned char>("PACKED", "fixed8"),
    scalar<char>("CHAR", "fixed8"),
    scalar<signed char>("SIGNED_CHAR", "fixed8"),
    scalar<unsigned char>("UNSIGNED_CHAR", "fixed8"),
    scalar<wchar_t>("WCHAR", sizeof(wchar_t) == 4 ? "fixed32" : "fixed16"),
    scalar<short>("SHORT", "fixed16"),
    scalar<unsigned short>("UNSIGNED_SHORT", "fixed16"),
    scalar<int>("INT", "fixed32"),
    scalar<unsigned>("UNSIGNED", "fixed32"),
    scalar<long>("LONG", sizeof(long) == 8 ? "fixed64" : "fixed32"),
    scalar<unsigned long>("UNSIGNED_LONG", sizeof(long) == 8 ? "fixed64" : "fixed32"),
    scalar<long long>("LONG_LONG", "fixed64"),
    scalar<long long>("LONG_LONG_INT", "fixed64"),
    scalar<unsigned long long>("UNSIGNED_LONG_LONG", "fixed64"),
    scalar<float>("FLOAT", "float32"),
    scalar<double>("DOUBLE", "float64"),
    scalar<long double>("LONG_DOUBLE", "long_double"),
    scalar<bool>("C_BOOL", "bool"),
    scalar<bool>("CXX_BOOL", "bool"),
    scalar<std::int8_t>("INT8_T", "fixed8"),
    scalar<std::int16_t>("INT16_T", "fixed16"),
    scalar<std::int32_t>("INT32_T", "fixed32"),
    scalar<std::int64_t>("INT64_T", "fixed64"),
    scalar<std::uint8_t>("UINT8_T", "fixed8"),
    scalar<std::uint16_t>("UINT16_T", "fixed16"),
    scalar<std::uint32_t>("UINT32_T", "fixed32"),
    scalar<std::uint64_t>("UINT64_T", "fixed64"),
    scalar<std::ptrdiff_t>("AINT", "fixed64"),
    scalar<std::int64_t>("OFFSET", "fixed64"),
    scalar<std::int64_t>("COUNT", "fixed64"),
    complex_of<float>("C_COMPLEX", "complex64"),
    complex_of<float>("C_FLOAT_COMPLEX", "complex64"),
    complex_of<double>("C_DOUBLE_COMPLEX", "complex128"),
    complex_of<long double>("C_LONG_DOUBLE_COMPLEX", "complex_long_double"),
    complex_of<float>("CXX_FLOAT_COMPLEX", "complex64"),
    complex_of<double>("CXX_DOUBLE_COMPLEX", "complex128"),
    complex_of<long double>("CXX_LONG_DOUBLE_COMPLEX", "complex_long_double"),
};

// name -> value type; the int index follows the value at the next offset aligned for an int.
const std::pair<const char*, const char*> kPairs[] = {
    {"FLOAT_INT", "FLOAT"}, {"DOUBLE_INT", "DOUBLE"}, {"LONG_INT", "LONG"},
    {"SHORT_INT", "SHORT"}, {"2INT", "INT"},          {"LONG_DOUBLE_INT", "LONG_DOUBLE"},
};

struct Table {
  std::map<std::string, TypeRef, std::less<>> types;
  std::vector<std::string> names;
};

const Table& table() {
  static const Table built = [] {
    Table result;
    for (const Scalar& entry : kScalars) {
      result.types.emplace(entry.name, Type::named(entry.name, entry.size, entry.alignment, entry.kind));
      result.names.emplace_back(entry.name);
    }
    for (const auto& [name, value] : kPairs) {
      const TypeRef& value_type = result.types.at(value);
      result.types.emplace(name, Type::named_pair(name, value_type, result.types.at("INT")));
      result.names.emplace_back(name);
    }
    return result;
  }();
  return built;
}

}  // namespace

TypeRef named_type(std::string_view name) {
  if (name.substr(0, 4) == "MPI_") name.remove_prefix(4);
  const auto& types = table().types;
  const auto found = types.find(name);
  return found == types.end() ? nullptr : found->second;
}

const std::vector<std::string>& named_type_names() { return table().names; }

}  // namespace pycomm::datatype
