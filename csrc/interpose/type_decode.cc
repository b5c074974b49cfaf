// Decoding of MPI datatypes (see type_decode.h). MPI describes a type by its constructor
// ("combiner") and the constructor's arguments in up to four arrays; the large-count forms move
// counts and displacements into a fourth array. Both are brought to the classic argument order
// first, so each constructor is read in one place.
#include "interpose/type_decode.h"

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "datatype/named.h"
#include "interpose/real_symbols.h"

namespace pycomm::interpose {
namespace {

using datatype::Distribution;
using datatype::Order;
using datatype::Type;
using datatype::TypeRef;

// Deeper nesting than any real program builds; a bound keeps a pathological type off the stack.
constexpr int kMaxDepth = 64;

// Thrown inside the decoder when a type has no exact pycomm form; caught in decode_type.
struct NoExactForm : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Envelope {
  MPI_Count integers = 0;
  MPI_Count addresses = 0;
  MPI_Count large_counts = 0;
  MPI_Count datatypes = 0;
  int combiner = MPI_COMBINER_NAMED;
};

Envelope get_envelope(MPI_Datatype handle) {
  Envelope envelope;
  if (auto large = PYCOMM_REAL(MPI_Type_get_envelope_c)) {
    if (large(handle, &envelope.integers, &envelope.addresses, &envelope.large_counts, &envelope.datatypes,
              &envelope.combiner) != MPI_SUCCESS) {
      throw NoExactForm("MPI_Type_get_envelope_c failed");
    }
    return envelope;
  }
  auto classic = PYCOMM_REAL(MPI_Type_get_envelope);
  int integers = 0, addresses = 0, datatypes = 0;
  if (classic == nullptr || classic(handle, &integers, &addresses, &datatypes, &envelope.combiner) != MPI_SUCCESS) {
    throw NoExactForm("MPI_Type_get_envelope failed");
  }
  envelope.integers = integers;
  envelope.addresses = addresses;
  envelope.datatypes = datatypes;
  return envelope;
}

// The datatypes MPI_Type_get_contents returns are new references to derived types, which the
// caller must free; predefined ones must not be freed.
class ChildTypes {
 public:
  ChildTypes() = default;
  ChildTypes(const ChildTypes&) = delete;
  ChildTypes& operator=(const ChildTypes&) = delete;
  ~ChildTypes() {
    auto free_type = PYCOMM_REAL(MPI_Type_free);
    for (MPI_Datatype handle : handles) {
      try {
        if (free_type != nullptr && get_envelope(handle).combiner != MPI_COMBINER_NAMED) {
          free_type(&handle);
        }
      } catch (const NoExactForm&) {
        // Nothing to free for a handle MPI cannot describe.
      }
    }
  }
  std::vector<MPI_Datatype> handles;
};

// The constructor's integers and addresses in the classic order (ints, then addresses).
std::vector<std::int64_t> get_contents(MPI_Datatype handle, const Envelope& envelope, ChildTypes& children) {
  std::vector<int> integers(static_cast<size_t>(envelope.integers));
  std::vector<MPI_Aint> addresses(static_cast<size_t>(envelope.addresses));
  std::vector<MPI_Count> large_counts(static_cast<size_t>(envelope.large_counts));
  children.handles.assign(static_cast<size_t>(envelope.datatypes), MPI_DATATYPE_NULL);
  if (auto large = PYCOMM_REAL(MPI_Type_get_contents_c)) {
    if (large(handle, envelope.integers, envelope.addresses, envelope.large_counts, envelope.datatypes,
              integers.data(), addresses.data(), large_counts.data(), children.handles.data()) != MPI_SUCCESS) {
      children.handles.clear();
      throw NoExactForm("MPI_Type_get_contents_c failed");
    }
  } else {
    auto classic = PYCOMM_REAL(MPI_Type_get_contents);
    if (classic == nullptr ||
        classic(handle, static_cast<int>(envelope.integers), static_cast<int>(envelope.addresses),
                static_cast<int>(envelope.datatypes), integers.data(), addresses.data(),
                children.handles.data()) != MPI_SUCCESS) {
      children.handles.clear();
      throw NoExactForm("MPI_Type_get_contents failed");
    }
  }
  std::vector<std::int64_t> values;
  values.reserve(integers.size() + addresses.size() + large_counts.size());
  if (large_counts.empty()) {
    values.insert(values.end(), integers.begin(), integers.end());
    values.insert(values.end(), addresses.begin(), addresses.end());
    return values;
  }
  // Large-count forms (MPI 4.0, table of MPI_Type_get_contents_c): subarray keeps ndims and order
  // as integers around sizes/subsizes/starts; darray keeps size, rank, ndims, then distributions,
  // arguments, grid and order as integers, with the global sizes as large counts; every other
  // constructor has all its values, in the classic order, among the large counts.
  if (envelope.combiner == MPI_COMBINER_SUBARRAY && integers.size() == 2) {
    values.push_back(integers[0]);
    values.insert(values.end(), large_counts.begin(), large_counts.end());
    values.push_back(integers[1]);
  } else if (envelope.combiner == MPI_COMBINER_DARRAY && integers.size() >= 3) {
    values.insert(values.end(), integers.begin(), integers.begin() + 3);
    values.insert(values.end(), large_counts.begin(), large_counts.end());
    values.insert(values.end(), integers.begin() + 3, integers.end());
  } else {
    values.insert(values.end(), integers.begin(), integers.end());
    values.insert(values.end(), large_counts.begin(), large_counts.end());
    values.insert(values.end(), addresses.begin(), addresses.end());
  }
  return values;
}

// Checked reads of a constructor's values.
class Values {
 public:
  explicit Values(std::vector<std::int64_t> values) : values_(std::move(values)) {}
  std::int64_t at(size_t index) const {
    if (index >= values_.size()) {
      throw NoExactForm("MPI_Type_get_contents returned fewer values than the constructor needs");
    }
    return values_[index];
  }
  std::vector<std::int64_t> range(size_t first, std::int64_t count) const {
    if (count < 0 || first + static_cast<size_t>(count) > values_.size()) {
      throw NoExactForm("MPI_Type_get_contents returned fewer values than the constructor needs");
    }
    return std::vector<std::int64_t>(values_.begin() + first, values_.begin() + first + count);
  }

 private:
  std::vector<std::int64_t> values_;
};

struct MpiBounds {
  MPI_Count size = 0, lb = 0, extent = 0, true_lb = 0, true_extent = 0;
};

MpiBounds mpi_bounds(MPI_Datatype handle) {
  MpiBounds bounds;
  auto size_c = PYCOMM_REAL(MPI_Type_size_c);
  auto extent_c = PYCOMM_REAL(MPI_Type_get_extent_c);
  auto true_extent_c = PYCOMM_REAL(MPI_Type_get_true_extent_c);
  if (size_c != nullptr && extent_c != nullptr && true_extent_c != nullptr) {
    if (size_c(handle, &bounds.size) != MPI_SUCCESS || extent_c(handle, &bounds.lb, &bounds.extent) != MPI_SUCCESS ||
        true_extent_c(handle, &bounds.true_lb, &bounds.true_extent) != MPI_SUCCESS) {
      throw NoExactForm("MPI could not report the type's bounds");
    }
    return bounds;
  }
  auto size = PYCOMM_REAL(MPI_Type_size);
  auto extent = PYCOMM_REAL(MPI_Type_get_extent);
  auto true_extent = PYCOMM_REAL(MPI_Type_get_true_extent);
  int size_int = 0;
  MPI_Aint lb = 0, extent_aint = 0, true_lb = 0, true_extent_aint = 0;
  if (size == nullptr || extent == nullptr || true_extent == nullptr || size(handle, &size_int) != MPI_SUCCESS ||
      size_int == MPI_UNDEFINED || extent(handle, &lb, &extent_aint) != MPI_SUCCESS ||
      true_extent(handle, &true_lb, &true_extent_aint) != MPI_SUCCESS) {
    throw NoExactForm("MPI could not report the type's bounds");
  }
  bounds = {size_int, lb, extent_aint, true_lb, true_extent_aint};
  return bounds;
}

// The decoded type made to agree with MPI's bounds. A struct's extent is padded by an alignment
// rule that is the implementation's own; where only lb/extent differ, the typemap is the same and
// a resized node states MPI's bounds exactly. A different size or different true bounds mean a
// different typemap: no exact form.
TypeRef agree_with_mpi(TypeRef decoded, MPI_Datatype handle) {
  const MpiBounds mpi = mpi_bounds(handle);
  const auto& bounds = decoded->bounds();
  if (bounds.size != mpi.size) {
    throw NoExactForm("decoded size differs from MPI_Type_size");
  }
  if (mpi.size > 0 && (bounds.true_lb != mpi.true_lb || bounds.true_extent() != mpi.true_extent)) {
    throw NoExactForm("decoded true bounds differ from MPI_Type_get_true_extent");
  }
  if (bounds.lb != mpi.lb || bounds.extent() != mpi.extent) {
    decoded = Type::resized(mpi.lb, mpi.extent, decoded);
    if (decoded->bounds().lb != mpi.lb || decoded->extent() != mpi.extent) {
      throw NoExactForm("resized bounds differ from MPI_Type_get_extent");
    }
  }
  return decoded;
}

std::string named_type_name(MPI_Datatype handle) {
  char name[MPI_MAX_OBJECT_NAME] = {};
  int length = 0;
  auto get_name = PYCOMM_REAL(MPI_Type_get_name);
  if (get_name != nullptr && get_name(handle, name, &length) == MPI_SUCCESS && length > 0) {
    return std::string(name, static_cast<size_t>(length));
  }
  // A handle is an int in MPICH's ABI and a pointer in Open MPI's: print whichever it is.
  std::ostringstream unnamed;
  unnamed << "MPI named type " << handle;
  return unnamed.str();
}

// The largest power of two (up to 16) dividing `size`: the C alignment of a basic type.
std::int64_t natural_alignment(std::int64_t size) {
  std::int64_t alignment = 1;
  while (alignment < size && alignment < 16 && size % (alignment * 2) == 0) {
    alignment *= 2;
  }
  return alignment;
}

TypeRef decode_named(MPI_Datatype handle) {
  const MpiBounds mpi = mpi_bounds(handle);
  const std::string name = named_type_name(handle);
  if (mpi.size <= 0) {
    throw NoExactForm("predefined type without data");
  }
  // The core's table, checked against what this MPI reports (agree_with_mpi throws where the C
  // layout assumed there is not this MPI's).
  if (TypeRef known = datatype::named_type(name)) {
    return agree_with_mpi(std::move(known), handle);
  }
  // Another predefined type (a Fortran type, say): a block of its size, if MPI reports no holes.
  if (mpi.lb != 0 || mpi.extent != mpi.size || mpi.true_lb != 0 || mpi.true_extent != mpi.size) {
    throw NoExactForm("predefined type with holes");
  }
  return Type::named(name, mpi.size, natural_alignment(mpi.size), name);
}

Order order_of(std::int64_t value) {
  if (value == MPI_ORDER_C) {
    return Order::c;
  }
  if (value == MPI_ORDER_FORTRAN) {
    return Order::fortran;
  }
  throw NoExactForm("unknown array order");
}

Distribution distribution_of(std::int64_t value) {
  switch (value) {
    case MPI_DISTRIBUTE_BLOCK:
      return Distribution::block;
    case MPI_DISTRIBUTE_CYCLIC:
      return Distribution::cyclic;
    case MPI_DISTRIBUTE_NONE:
      return Distribution::none;
    default:
      throw NoExactForm("unknown darray distribution");
  }
}

TypeRef decode(MPI_Datatype handle, int depth);

TypeRef decode_derived(const Envelope& envelope, const Values& values, const std::vector<TypeRef>& children) {
  const auto child = [&](size_t index) -> const TypeRef& {
    if (index >= children.size()) {
      throw NoExactForm("MPI_Type_get_contents returned fewer datatypes than the constructor needs");
    }
    return children[index];
  };
  switch (envelope.combiner) {
    case MPI_COMBINER_DUP:
      return Type::dup(child(0));
    case MPI_COMBINER_CONTIGUOUS:
      return Type::contiguous(values.at(0), child(0));
    case MPI_COMBINER_VECTOR:
      return Type::vector(values.at(0), values.at(1), values.at(2), child(0));
    case MPI_COMBINER_HVECTOR:
      return Type::hvector(values.at(0), values.at(1), values.at(2), child(0));
    case MPI_COMBINER_INDEXED: {
      const std::int64_t count = values.at(0);
      return Type::indexed(values.range(1, count), values.range(1 + count, count), child(0));
    }
    case MPI_COMBINER_HINDEXED: {
      const std::int64_t count = values.at(0);
      return Type::hindexed(values.range(1, count), values.range(1 + count, count), child(0));
    }
    case MPI_COMBINER_INDEXED_BLOCK: {
      const std::int64_t count = values.at(0);
      return Type::indexed_block(values.at(1), values.range(2, count), child(0));
    }
    case MPI_COMBINER_HINDEXED_BLOCK: {
      const std::int64_t count = values.at(0);
      return Type::hindexed_block(values.at(1), values.range(2, count), child(0));
    }
    case MPI_COMBINER_STRUCT: {
      const std::int64_t count = values.at(0);
      if (count < 0 || static_cast<size_t>(count) > children.size()) {
        throw NoExactForm("struct with fewer datatypes than blocks");
      }
      return Type::struct_(values.range(1, count), values.range(1 + count, count),
                           std::vector<TypeRef>(children.begin(), children.begin() + count));
    }
    case MPI_COMBINER_SUBARRAY: {
      const std::int64_t dims = values.at(0);
      return Type::subarray(values.range(1, dims), values.range(1 + dims, dims), values.range(1 + 2 * dims, dims),
                            order_of(values.at(1 + 3 * static_cast<size_t>(dims))), child(0));
    }
    case MPI_COMBINER_DARRAY: {
      const std::int64_t dims = values.at(2);
      std::vector<Distribution> distributions;
      for (const std::int64_t value : values.range(3 + dims, dims)) {
        distributions.push_back(distribution_of(value));
      }
      std::vector<std::int64_t> arguments = values.range(3 + 2 * dims, dims);
      for (std::int64_t& argument : arguments) {
        if (argument == MPI_DISTRIBUTE_DFLT_DARG) {
          argument = datatype::kDefaultDistributionArgument;
        }
      }
      return Type::darray(values.at(0), values.at(1), values.range(3, dims), std::move(distributions),
                          std::move(arguments), values.range(3 + 3 * dims, dims),
                          order_of(values.at(3 + 4 * static_cast<size_t>(dims))), child(0));
    }
    case MPI_COMBINER_RESIZED:
      return Type::resized(values.at(0), values.at(1), child(0));
    default:
      // Fortran parameterised types (F90_REAL ...), the removed *_INTEGER forms, value-index types.
      throw NoExactForm("constructor not represented");
  }
}

TypeRef decode(MPI_Datatype handle, int depth) {
  if (depth > kMaxDepth) {
    throw NoExactForm("type nested too deeply");
  }
  const Envelope envelope = get_envelope(handle);
  if (envelope.combiner == MPI_COMBINER_NAMED) {
    return decode_named(handle);
  }
  ChildTypes child_handles;
  const Values values(get_contents(handle, envelope, child_handles));
  std::vector<TypeRef> children;
  children.reserve(child_handles.handles.size());
  for (MPI_Datatype child : child_handles.handles) {
    children.push_back(decode(child, depth + 1));
  }
  return agree_with_mpi(decode_derived(envelope, values, children), handle);
}

}  // namespace

TypeRef decode_type(MPI_Datatype handle) {
  try {
    return decode(handle, 0);
  } catch (...) {
    // NoExactForm, the IR's own InvalidArgument/NotSupported, or bad_alloc: MPI keeps the type.
    return nullptr;
  }
}

}  // namespace pycomm::interpose
