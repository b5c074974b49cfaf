#include "datatype/type.h"

#include <algorithm>

#include "common/error.h"

namespace pycomm::datatype {

const char* combiner_name(Combiner combiner) {
  switch (combiner) {
    case Combiner::named: return "named";
    case Combiner::contiguous: return "contiguous";
    case Combiner::vector: return "vector";
    case Combiner::hvector: return "hvector";
    case Combiner::indexed: return "indexed";
    case Combiner::hindexed: return "hindexed";
    case Combiner::indexed_block: return "indexed_block";
    case Combiner::hindexed_block: return "hindexed_block";
    case Combiner::struct_: return "struct";
    case Combiner::subarray: return "subarray";
    case Combiner::darray: return "darray";
    case Combiner::resized: return "resized";
    case Combiner::dup: return "dup";
  }
  return "unknown";
}

namespace {

std::int64_t multiply(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    PYCOMM_THROW(InvalidArgument, what, " overflows 64 bits (", a, " x ", b, ")");
  }
  return product;
}

std::int64_t add(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) PYCOMM_THROW(InvalidArgument, what, " overflows 64 bits");
  return sum;
}

void require_type(const TypeRef& type, const char* constructor) {
  PYCOMM_ENFORCE(type != nullptr, constructor, ": the old type is null");
}

void require_non_negative(std::int64_t value, const char* constructor, const char* what) {
  PYCOMM_ENFORCE(value >= 0, constructor, ": ", what, " must be >= 0, got ", value);
}

// The bounds of `count` consecutive copies of `old` placed at byte `displacement`, as MPICH computes
// them (also for count 0, which indexed_block with blocklength 0 produces: the "last copy" then
// lies one extent before the first). The true bounds keep their distance from lb and ub.
Bounds block_bounds(const Bounds& old, std::int64_t count, std::int64_t displacement) {
  const std::int64_t span = multiply(count - 1, old.extent(), "datatype extent");
  Bounds bounds;
  if (old.ub >= old.lb) {
    bounds.lb = add(old.lb, displacement, "datatype bound");
    bounds.ub = add(add(old.ub, displacement, "datatype bound"), span, "datatype bound");
  } else {
    bounds.lb = add(add(old.lb, displacement, "datatype bound"), span, "datatype bound");
    bounds.ub = add(old.ub, displacement, "datatype bound");
  }
  bounds.true_lb = bounds.lb + (old.true_lb - old.lb);
  bounds.true_ub = bounds.ub + (old.true_ub - old.ub);
  bounds.size = multiply(std::max<std::int64_t>(count, 0), old.size, "datatype size");
  bounds.alignment = old.alignment;
  return bounds;
}

// Accumulates the bounds of a type made of blocks: each bound is the extreme over the blocks.
class BoundsBuilder {
 public:
  void add(const Bounds& block) {
    if (empty_) {
      result_ = block;
      empty_ = false;
      return;
    }
    result_.lb = std::min(result_.lb, block.lb);
    result_.ub = std::max(result_.ub, block.ub);
    result_.true_lb = std::min(result_.true_lb, block.true_lb);
    result_.true_ub = std::max(result_.true_ub, block.true_ub);
    result_.size = ::pycomm::datatype::add(result_.size, block.size, "datatype size");
    result_.alignment = std::max(result_.alignment, block.alignment);
  }
  // No block at all: MPI's zero-length type, every bound 0.
  Bounds finish() const { return result_; }

 private:
  Bounds result_;
  bool empty_ = true;
};

// A type of no data made from an old type: MPICH makes it the zero-length type (all bounds 0,
// no alignment, no element kind).
Bounds zero_length(const Bounds&) { return Bounds{}; }

bool is_zero_length(const Bounds& bounds) {
  return bounds.size == 0 && bounds.lb == 0 && bounds.ub == 0 && bounds.true_lb == 0 && bounds.true_ub == 0;
}

}  // namespace

class TypeBuilder {
 public:
  static std::shared_ptr<Type> make(Combiner combiner, std::vector<std::int64_t> integers,
                                    std::vector<TypeRef> children) {
    auto type = std::shared_ptr<Type>(new Type(combiner, std::move(integers), std::move(children)));
    for (const TypeRef& child : type->children_) type->depth_ = std::max(type->depth_, child->depth_ + 1);
    if (type->children_.size() == 1) type->element_kind_ = type->children_[0]->element_kind_;
    return type;
  }
  static void set_bounds(Type& type, const Bounds& bounds) {
    type.bounds_ = bounds;
    if (is_zero_length(bounds)) type.element_kind_.clear();
  }
  static void set_name(Type& type, std::string name) { type.name_ = std::move(name); }
  static void set_element_kind(Type& type, std::string kind) { type.element_kind_ = std::move(kind); }
  static void set_lowered(Type& type, TypeRef lowered) {
    type.bounds_ = lowered->bounds_;
    type.lowered_ = std::move(lowered);
  }
};

Type::Type(Combiner combiner, std::vector<std::int64_t> integers, std::vector<TypeRef> children)
    : combiner_(combiner), integers_(std::move(integers)), children_(std::move(children)) {}

TypeRef Type::named(std::string name, std::int64_t size, std::int64_t alignment, std::string kind) {
  PYCOMM_ENFORCE(size >= 0, "named type '", name, "': size must be >= 0, got ", size);
  PYCOMM_ENFORCE(alignment >= 1, "named type '", name, "': alignment must be >= 1, got ", alignment);
  auto type = TypeBuilder::make(Combiner::named, {size, alignment}, {});
  Bounds bounds;
  bounds.size = size;
  bounds.ub = size;
  bounds.true_ub = size;
  bounds.alignment = alignment;
  TypeBuilder::set_bounds(*type, bounds);
  TypeBuilder::set_name(*type, std::move(name));
  TypeBuilder::set_element_kind(*type, std::move(kind));
  return type;
}

TypeRef Type::named_pair(std::string name, TypeRef value, TypeRef index) {
  require_type(value, "named_pair");
  require_type(index, "named_pair");
  const std::int64_t index_alignment = index->bounds().alignment;
  const std::int64_t index_offset = (value->size() + index_alignment - 1) / index_alignment * index_alignment;
  TypeRef lowered = struct_({1, 1}, {0, index_offset}, {value, index});
  Bounds bounds = lowered->bounds();
  const std::int64_t alignment = bounds.alignment;
  if (bounds.extent() % alignment != 0) bounds.ub += alignment - bounds.extent() % alignment;
  lowered = resized(bounds.lb, bounds.extent(), lowered);
  auto type = TypeBuilder::make(Combiner::named, {bounds.size, alignment}, {});
  TypeBuilder::set_lowered(*type, std::move(lowered));
  TypeBuilder::set_name(*type, name);
  TypeBuilder::set_element_kind(*type, std::move(name));
  return type;
}

TypeRef Type::contiguous(std::int64_t count, TypeRef old) {
  require_type(old, "contiguous");
  require_non_negative(count, "contiguous", "count");
  const Bounds bounds =
      count == 0 || old->size() == 0 ? zero_length(old->bounds()) : block_bounds(old->bounds(), count, 0);
  auto type = TypeBuilder::make(Combiner::contiguous, {count}, {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

namespace {

Bounds vector_bounds(const Bounds& old, std::int64_t count, std::int64_t blocklength, std::int64_t stride_bytes) {
  if (count == 0 || old.size == 0) return zero_length(old);
  // MPICH's formula, whose blocklength - 1 is -1 for empty blocks (kept: it decides the extent).
  const std::int64_t along_block = multiply(blocklength - 1, old.extent(), "vector extent");
  const std::int64_t along_stride = multiply(count - 1, stride_bytes, "vector extent");
  Bounds bounds;
  bounds.lb = old.lb + std::min<std::int64_t>(along_stride, 0) + (old.extent() < 0 ? along_block : 0);
  bounds.ub = old.ub + std::max<std::int64_t>(along_stride, 0) + (old.extent() >= 0 ? along_block : 0);
  bounds.true_lb = bounds.lb + (old.true_lb - old.lb);
  bounds.true_ub = bounds.ub + (old.true_ub - old.ub);
  bounds.size = multiply(multiply(count, blocklength, "vector size"), old.size, "vector size");
  bounds.alignment = old.alignment;
  return bounds;
}

}  // namespace

TypeRef Type::vector(std::int64_t count, std::int64_t blocklength, std::int64_t stride, TypeRef old) {
  require_type(old, "vector");
  require_non_negative(count, "vector", "count");
  require_non_negative(blocklength, "vector", "blocklength");
  const Bounds bounds =
      vector_bounds(old->bounds(), count, blocklength, multiply(stride, old->extent(), "vector stride"));
  auto type = TypeBuilder::make(Combiner::vector, {count, blocklength, stride}, {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

TypeRef Type::hvector(std::int64_t count, std::int64_t blocklength, std::int64_t stride_bytes, TypeRef old) {
  require_type(old, "hvector");
  require_non_negative(count, "hvector", "count");
  require_non_negative(blocklength, "hvector", "blocklength");
  const Bounds bounds = vector_bounds(old->bounds(), count, blocklength, stride_bytes);
  auto type = TypeBuilder::make(Combiner::hvector, {count, blocklength, stride_bytes}, {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

namespace {

// indexed / hindexed / their _block forms: blocks of `old` at displacements scaled by `unit` bytes.
// indexed / hindexed: blocks of `old` at displacements scaled by `unit` bytes; empty blocks do not
// count. The _block forms keep empty blocks (MPICH does), so they pass skip_empty = false.
Bounds indexed_bounds(const Bounds& old, const std::vector<std::int64_t>& blocklengths,
                      const std::vector<std::int64_t>& displacements, std::int64_t unit, bool skip_empty) {
  if (old.size == 0) return zero_length(old);
  BoundsBuilder bounds;
  for (std::size_t i = 0; i < displacements.size(); ++i) {
    if (skip_empty && blocklengths[i] == 0) continue;
    bounds.add(block_bounds(old, blocklengths[i], multiply(displacements[i], unit, "indexed displacement")));
  }
  return bounds.finish();
}

void check_blocklengths(const std::vector<std::int64_t>& blocklengths, const std::vector<std::int64_t>& displacements,
                        const char* constructor) {
  PYCOMM_ENFORCE(blocklengths.size() == displacements.size(), constructor, ": ", blocklengths.size(),
                 " blocklengths but ", displacements.size(), " displacements");
  for (std::size_t i = 0; i < blocklengths.size(); ++i) {
    PYCOMM_ENFORCE(blocklengths[i] >= 0, constructor, ": blocklengths[", i, "] must be >= 0, got ", blocklengths[i]);
  }
}

std::vector<std::int64_t> joined(std::int64_t first, const std::vector<std::int64_t>& a,
                                 const std::vector<std::int64_t>& b) {
  std::vector<std::int64_t> out{first};
  out.insert(out.end(), a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

}  // namespace

TypeRef Type::indexed(std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements, TypeRef old) {
  require_type(old, "indexed");
  check_blocklengths(blocklengths, displacements, "indexed");
  const Bounds bounds = indexed_bounds(old->bounds(), blocklengths, displacements, old->extent(), true);
  auto type = TypeBuilder::make(
      Combiner::indexed, joined(static_cast<std::int64_t>(blocklengths.size()), blocklengths, displacements),
      {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

TypeRef Type::hindexed(std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements_bytes,
                       TypeRef old) {
  require_type(old, "hindexed");
  check_blocklengths(blocklengths, displacements_bytes, "hindexed");
  const Bounds bounds = indexed_bounds(old->bounds(), blocklengths, displacements_bytes, 1, true);
  auto type = TypeBuilder::make(
      Combiner::hindexed,
      joined(static_cast<std::int64_t>(blocklengths.size()), blocklengths, displacements_bytes), {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

TypeRef Type::indexed_block(std::int64_t blocklength, std::vector<std::int64_t> displacements, TypeRef old) {
  require_type(old, "indexed_block");
  require_non_negative(blocklength, "indexed_block", "blocklength");
  const std::vector<std::int64_t> blocklengths(displacements.size(), blocklength);
  const Bounds bounds = indexed_bounds(old->bounds(), blocklengths, displacements, old->extent(), false);
  auto type = TypeBuilder::make(Combiner::indexed_block, joined(blocklength, {}, displacements), {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

TypeRef Type::hindexed_block(std::int64_t blocklength, std::vector<std::int64_t> displacements_bytes, TypeRef old) {
  require_type(old, "hindexed_block");
  require_non_negative(blocklength, "hindexed_block", "blocklength");
  const std::vector<std::int64_t> blocklengths(displacements_bytes.size(), blocklength);
  const Bounds bounds = indexed_bounds(old->bounds(), blocklengths, displacements_bytes, 1, false);
  auto type =
      TypeBuilder::make(Combiner::hindexed_block, joined(blocklength, {}, displacements_bytes), {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

TypeRef Type::struct_(std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements_bytes,
                      std::vector<TypeRef> types) {
  check_blocklengths(blocklengths, displacements_bytes, "struct");
  PYCOMM_ENFORCE(types.size() == blocklengths.size(), "struct: ", blocklengths.size(), " blocklengths but ",
                 types.size(), " types");
  BoundsBuilder builder;
  for (std::size_t i = 0; i < types.size(); ++i) {
    PYCOMM_ENFORCE(types[i] != nullptr, "struct: types[", i, "] is null");
    if (blocklengths[i] == 0) continue;
    builder.add(block_bounds(types[i]->bounds(), blocklengths[i], displacements_bytes[i]));
  }
  // A struct of no data at all is MPI's zero-length type, whatever the bounds of its members.
  Bounds bounds = builder.finish().size == 0 ? zero_length(builder.finish()) : builder.finish();
  // The members' common element kind, "" when they differ. MPICH counts every member here, empty
  // blocks too (the alignment, above, comes from the non-empty ones only).
  std::string kind = types.empty() ? std::string() : types[0]->element_kind();
  for (const TypeRef& member : types) {
    if (member->element_kind() != kind) kind.clear();
  }
  // MPI lets a struct's extent be padded so that an array of them keeps each member aligned. MPICH
  // pads to the largest alignment among the members, and only a struct whose members hold elements
  // of different kinds (one of a single kind is laid out like an hindexed type).
  const std::int64_t extent = bounds.extent();
  if (kind.empty() && bounds.alignment > 1 && extent > 0 && extent % bounds.alignment != 0) {
    bounds.ub += bounds.alignment - extent % bounds.alignment;
  }
  auto type = TypeBuilder::make(
      Combiner::struct_, joined(static_cast<std::int64_t>(blocklengths.size()), blocklengths, displacements_bytes),
      std::move(types));
  TypeBuilder::set_bounds(*type, bounds);
  if (!is_zero_length(bounds)) TypeBuilder::set_element_kind(*type, std::move(kind));
  return type;
}

TypeRef Type::resized(std::int64_t lb, std::int64_t extent, TypeRef old) {
  require_type(old, "resized");
  Bounds bounds = old->bounds();
  bounds.lb = lb;
  bounds.ub = add(lb, extent, "resized upper bound");
  auto type = TypeBuilder::make(Combiner::resized, {lb, extent}, {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

TypeRef Type::dup(TypeRef old) {
  require_type(old, "dup");
  const Bounds bounds = old->bounds();
  auto type = TypeBuilder::make(Combiner::dup, {}, {std::move(old)});
  TypeBuilder::set_bounds(*type, bounds);
  return type;
}

namespace {

void check_array_shape(const std::vector<std::int64_t>& sizes, const std::vector<std::int64_t>& subsizes,
                       const std::vector<std::int64_t>& starts) {
  PYCOMM_ENFORCE(!sizes.empty(), "subarray: needs at least one dimension");
  PYCOMM_ENFORCE(subsizes.size() == sizes.size() && starts.size() == sizes.size(), "subarray: sizes (",
                 sizes.size(), "), subsizes (", subsizes.size(), ") and starts (", starts.size(),
                 ") must have one entry per dimension");
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    PYCOMM_ENFORCE(sizes[i] >= 1, "subarray: sizes[", i, "] must be >= 1, got ", sizes[i]);
    PYCOMM_ENFORCE(subsizes[i] >= 1 && subsizes[i] <= sizes[i], "subarray: subsizes[", i, "] must be in [1, ",
                   sizes[i], "], got ", subsizes[i]);
    PYCOMM_ENFORCE(starts[i] >= 0 && starts[i] <= sizes[i] - subsizes[i], "subarray: starts[", i,
                   "] must be in [0, ", sizes[i] - subsizes[i], "], got ", starts[i]);
  }
}

}  // namespace

TypeRef Type::subarray(std::vector<std::int64_t> sizes, std::vector<std::int64_t> subsizes,
                       std::vector<std::int64_t> starts, Order order, TypeRef old) {
  require_type(old, "subarray");
  check_array_shape(sizes, subsizes, starts);
  const std::size_t ndims = sizes.size();
  const std::int64_t extent = old->extent();
  // Dimension indices from fastest-varying to slowest.
  std::vector<std::size_t> fastest_first(ndims);
  for (std::size_t i = 0; i < ndims; ++i) fastest_first[i] = order == Order::c ? ndims - 1 - i : i;

  // The composition MPI defines: the two fastest dimensions as a vector, each further one as an
  // hvector, then the start offset and the full array's extent through resized.
  TypeRef lowered;
  const std::size_t d0 = fastest_first[0];
  if (ndims == 1) {
    lowered = contiguous(subsizes[d0], old);
  } else {
    const std::size_t d1 = fastest_first[1];
    lowered = vector(subsizes[d1], subsizes[d0], sizes[d0], old);
    std::int64_t stride = multiply(sizes[d0], extent, "subarray stride");
    for (std::size_t k = 2; k < ndims; ++k) {
      stride = multiply(stride, sizes[fastest_first[k - 1]], "subarray stride");
      lowered = hvector(subsizes[fastest_first[k]], 1, stride, lowered);
    }
  }
  std::int64_t displacement = 0;
  std::int64_t elements = 1;
  for (std::size_t k = 0; k < ndims; ++k) {
    displacement = add(displacement, multiply(elements, starts[fastest_first[k]], "subarray offset"),
                       "subarray offset");
    elements = multiply(elements, sizes[fastest_first[k]], "subarray size");
  }
  lowered = hindexed_block(1, {multiply(displacement, extent, "subarray offset")}, lowered);
  lowered = resized(0, multiply(elements, extent, "subarray extent"), lowered);

  std::vector<std::int64_t> integers{static_cast<std::int64_t>(ndims)};
  for (const auto* values : {&sizes, &subsizes, &starts}) integers.insert(integers.end(), values->begin(), values->end());
  integers.push_back(order == Order::c ? 0 : 1);
  auto type = TypeBuilder::make(Combiner::subarray, std::move(integers), {std::move(old)});
  TypeBuilder::set_lowered(*type, std::move(lowered));
  return type;
}

namespace {

struct DarrayDimension {
  TypeRef type;
  std::int64_t start_offset = 0;  // in elements of the old type along this dimension
};

// One dimension of a block distribution (MPI's MPI_DISTRIBUTE_BLOCK).
DarrayDimension darray_block(const std::vector<std::int64_t>& global_sizes, std::size_t dim, Order order,
                             std::int64_t processes, std::int64_t coordinate, std::int64_t argument,
                             std::int64_t old_extent, const TypeRef& old) {
  const std::int64_t global_size = global_sizes[dim];
  std::int64_t block = argument;
  if (argument == kDefaultDistributionArgument) {
    block = (global_size + processes - 1) / processes;
  } else {
    PYCOMM_ENFORCE(argument > 0, "darray: block distribution argument must be > 0, got ", argument);
    PYCOMM_ENFORCE(multiply(argument, processes, "darray block") >= global_size, "darray: block size ", argument,
                   " x ", processes, " processes does not cover the ", global_size, " elements of dimension ", dim);
  }
  const std::int64_t mine = std::max<std::int64_t>(0, std::min(block, global_size - block * coordinate));
  const std::size_t ndims = global_sizes.size();
  const bool fastest = order == Order::fortran ? dim == 0 : dim == ndims - 1;
  TypeRef type;
  if (fastest) {
    type = Type::contiguous(mine, old);
  } else {
    std::int64_t stride = old_extent;
    if (order == Order::fortran) {
      for (std::size_t i = 0; i < dim; ++i) stride = multiply(stride, global_sizes[i], "darray stride");
    } else {
      for (std::size_t i = ndims - 1; i > dim; --i) stride = multiply(stride, global_sizes[i], "darray stride");
    }
    type = Type::hvector(mine, 1, stride, old);
  }
  type = Type::resized(0, multiply(global_size, old->extent(), "darray extent"), type);
  return {type, mine == 0 ? 0 : block * coordinate};
}

// One dimension of a cyclic distribution (MPI_DISTRIBUTE_CYCLIC).
DarrayDimension darray_cyclic(const std::vector<std::int64_t>& global_sizes, std::size_t dim, Order order,
                              std::int64_t processes, std::int64_t coordinate, std::int64_t argument,
                              std::int64_t old_extent, const TypeRef& old) {
  const std::int64_t block = argument == kDefaultDistributionArgument ? 1 : argument;
  PYCOMM_ENFORCE(block > 0, "darray: cyclic distribution argument must be > 0, got ", argument);
  const std::int64_t first = coordinate * block;
  const std::int64_t last = global_sizes[dim] - 1;
  std::int64_t local = 0;
  if (last >= first) {
    const std::int64_t cycle = processes * block;
    local = ((last - first + 1) / cycle) * block + std::min((last - first + 1) % cycle, block);
  }
  const std::int64_t count = local / block;
  const std::int64_t remainder = local % block;
  std::int64_t stride = multiply(multiply(processes, block, "darray stride"), old_extent, "darray stride");
  const std::size_t ndims = global_sizes.size();
  if (order == Order::fortran) {
    for (std::size_t i = 0; i < dim; ++i) stride = multiply(stride, global_sizes[i], "darray stride");
  } else {
    for (std::size_t i = ndims - 1; i > dim; --i) stride = multiply(stride, global_sizes[i], "darray stride");
  }
  TypeRef type = Type::hvector(count, block, stride, old);
  if (remainder != 0) {
    type = Type::struct_({1, remainder}, {0, multiply(count, stride, "darray offset")}, {type, old});
  }
  std::int64_t start_offset = coordinate * block;
  const bool fastest = order == Order::fortran ? dim == 0 : dim == ndims - 1;
  if (fastest) {
    type = Type::hindexed_block(1, {multiply(coordinate * block, old_extent, "darray offset")}, type);
    type = Type::resized(0, multiply(old_extent, global_sizes[dim], "darray extent"), type);
    start_offset = 0;
  }
  if (local == 0) start_offset = 0;
  type = Type::resized(0, multiply(global_sizes[dim], old->extent(), "darray extent"), type);
  return {type, start_offset};
}

}  // namespace

TypeRef Type::darray(std::int64_t size, std::int64_t rank, std::vector<std::int64_t> global_sizes,
                     std::vector<Distribution> distributions, std::vector<std::int64_t> distribution_arguments,
                     std::vector<std::int64_t> process_grid, Order order, TypeRef old) {
  require_type(old, "darray");
  const std::size_t ndims = global_sizes.size();
  PYCOMM_ENFORCE(ndims >= 1, "darray: needs at least one dimension");
  PYCOMM_ENFORCE(distributions.size() == ndims && distribution_arguments.size() == ndims &&
                     process_grid.size() == ndims,
                 "darray: global sizes, distributions, distribution arguments and the process grid must have one "
                 "entry per dimension");
  PYCOMM_ENFORCE(size >= 1, "darray: size must be >= 1, got ", size);
  PYCOMM_ENFORCE(rank >= 0 && rank < size, "darray: rank must be in [0, ", size, "), got ", rank);
  std::int64_t grid = 1;
  for (std::size_t i = 0; i < ndims; ++i) {
    PYCOMM_ENFORCE(global_sizes[i] >= 1, "darray: global_sizes[", i, "] must be >= 1, got ", global_sizes[i]);
    PYCOMM_ENFORCE(process_grid[i] >= 1, "darray: process_grid[", i, "] must be >= 1, got ", process_grid[i]);
    PYCOMM_ENFORCE(distributions[i] != Distribution::none || process_grid[i] == 1, "darray: dimension ", i,
                   " is not distributed, so its process_grid entry must be 1, got ", process_grid[i]);
    grid = multiply(grid, process_grid[i], "darray process grid");
  }
  PYCOMM_ENFORCE(grid == size, "darray: the process grid has ", grid, " processes but size is ", size);

  // The process's coordinates in the grid, row-major whatever the array order.
  std::vector<std::int64_t> coordinates(ndims);
  std::int64_t remaining = size;
  std::int64_t rank_left = rank;
  for (std::size_t i = 0; i < ndims; ++i) {
    remaining /= process_grid[i];
    coordinates[i] = rank_left / remaining;
    rank_left %= remaining;
  }

  const std::int64_t old_extent = old->extent();
  std::vector<std::int64_t> start_offsets(ndims, 0);
  TypeRef current = old;
  for (std::size_t k = 0; k < ndims; ++k) {
    const std::size_t dim = order == Order::fortran ? k : ndims - 1 - k;
    DarrayDimension result;
    switch (distributions[dim]) {
      case Distribution::block:
        result = darray_block(global_sizes, dim, order, process_grid[dim], coordinates[dim],
                              distribution_arguments[dim], old_extent, current);
        break;
      case Distribution::cyclic:
        result = darray_cyclic(global_sizes, dim, order, process_grid[dim], coordinates[dim],
                               distribution_arguments[dim], old_extent, current);
        break;
      case Distribution::none:
        result = darray_block(global_sizes, dim, order, 1, 0, kDefaultDistributionArgument, old_extent, current);
        break;
    }
    current = result.type;
    start_offsets[dim] = result.start_offset;
  }
  std::int64_t displacement = 0;
  std::int64_t elements = 1;
  for (std::size_t k = 0; k < ndims; ++k) {
    const std::size_t dim = order == Order::fortran ? k : ndims - 1 - k;
    displacement = add(displacement, multiply(elements, start_offsets[dim], "darray offset"), "darray offset");
    elements = multiply(elements, global_sizes[dim], "darray size");
  }
  TypeRef lowered = hindexed_block(1, {multiply(displacement, old_extent, "darray offset")}, current);
  lowered = resized(0, multiply(elements, old_extent, "darray extent"), lowered);

  std::vector<std::int64_t> integers{size, rank, static_cast<std::int64_t>(ndims)};
  integers.insert(integers.end(), global_sizes.begin(), global_sizes.end());
  for (Distribution distribution : distributions) integers.push_back(static_cast<std::int64_t>(distribution));
  integers.insert(integers.end(), distribution_arguments.begin(), distribution_arguments.end());
  integers.insert(integers.end(), process_grid.begin(), process_grid.end());
  integers.push_back(order == Order::c ? 0 : 1);
  auto type = TypeBuilder::make(Combiner::darray, std::move(integers), {std::move(old)});
  TypeBuilder::set_lowered(*type, std::move(lowered));
  return type;
}

namespace {

Layout indexed_layout(const Layout& old, std::int64_t old_extent, const std::vector<std::int64_t>& blocklengths,
                      const std::vector<std::int64_t>& displacements, std::int64_t unit) {
  Layout layout;
  for (std::size_t i = 0; i < displacements.size(); ++i) {
    if (blocklengths[i] == 0) continue;
    append_layout(layout, shift_layout(repeat_layout(old, blocklengths[i], old_extent), displacements[i] * unit));
  }
  return layout;
}

}  // namespace

const Layout& Type::layout() const {
  std::call_once(layout_once_, [this] {
    const auto& n = integers_;
    Layout layout;
    switch (combiner_) {
      case Combiner::named: layout = lowered_ ? lowered_->layout() : block_layout(bounds_.size); break;
      case Combiner::contiguous:
        layout = repeat_layout(children_[0]->layout(), n[0], children_[0]->extent());
        break;
      case Combiner::vector:
      case Combiner::hvector: {
        const TypeRef& old = children_[0];
        const std::int64_t stride = combiner_ == Combiner::vector ? n[2] * old->extent() : n[2];
        layout = repeat_layout(repeat_layout(old->layout(), n[1], old->extent()), n[0], stride);
        break;
      }
      case Combiner::indexed:
      case Combiner::hindexed: {
        const TypeRef& old = children_[0];
        const auto count = static_cast<std::size_t>(n[0]);
        const std::vector<std::int64_t> blocklengths(n.begin() + 1, n.begin() + 1 + count);
        const std::vector<std::int64_t> displacements(n.begin() + 1 + count, n.end());
        layout = indexed_layout(old->layout(), old->extent(), blocklengths, displacements,
                                combiner_ == Combiner::indexed ? old->extent() : 1);
        break;
      }
      case Combiner::indexed_block:
      case Combiner::hindexed_block: {
        const TypeRef& old = children_[0];
        const std::vector<std::int64_t> displacements(n.begin() + 1, n.end());
        const std::vector<std::int64_t> blocklengths(displacements.size(), n[0]);
        layout = indexed_layout(old->layout(), old->extent(), blocklengths, displacements,
                                combiner_ == Combiner::indexed_block ? old->extent() : 1);
        break;
      }
      case Combiner::struct_: {
        const auto count = static_cast<std::size_t>(n[0]);
        for (std::size_t i = 0; i < count; ++i) {
          const std::int64_t blocklength = n[1 + i];
          if (blocklength == 0) continue;
          const TypeRef& child = children_[i];
          append_layout(layout, shift_layout(repeat_layout(child->layout(), blocklength, child->extent()),
                                             n[1 + count + i]));
        }
        break;
      }
      case Combiner::subarray:
      case Combiner::darray: layout = lowered_->layout(); break;
      case Combiner::resized:
      case Combiner::dup: layout = children_[0]->layout(); break;
    }
    touched_ = layout_span(layout);
    layout_ = std::make_unique<const Layout>(std::move(layout));
  });
  return *layout_;
}

const Span& Type::touched() const {
  layout();
  return touched_;
}

}  // namespace pycomm::datatype
