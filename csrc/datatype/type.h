// The type IR of pycomm.datatype: one immutable node per MPI type constructor, with the bounds
// MPI defines (size, lower bound, extent, true lower bound, true extent) computed at construction.
// Nothing here knows MPI: the interposer and mpi4py's decoder translate MPI handles into these
// nodes. A node is shared (TypeRef) and never changes; its canonical layout is computed once, on
// first use, and cached in the node (Type::layout()), which is what "commit" means here.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "datatype/layout.h"

namespace pycomm::datatype {

enum class Combiner {
  named,
  contiguous,
  vector,
  hvector,
  indexed,
  hindexed,
  indexed_block,
  hindexed_block,
  struct_,
  subarray,
  darray,
  resized,
  dup,
};

const char* combiner_name(Combiner combiner);

enum class Order { c, fortran };

// MPI_DISTRIBUTE_BLOCK / CYCLIC / NONE; kDefaultDistributionArgument is MPI_DISTRIBUTE_DFLT_DARG.
enum class Distribution { block, cyclic, none };
inline constexpr std::int64_t kDefaultDistributionArgument = -1;

class Type;
using TypeRef = std::shared_ptr<const Type>;

// The bounds MPI reports for a type (MPI_Type_size, MPI_Type_get_extent, MPI_Type_get_true_extent).
struct Bounds {
  std::int64_t size = 0;     // bytes of data (what MPI_Pack writes per object)
  std::int64_t lb = 0;       // lower bound: where the type's extent starts, relative to its origin
  std::int64_t ub = 0;       // upper bound; extent = ub - lb (the step between consecutive objects)
  std::int64_t true_lb = 0;  // the first byte of data (ignoring resized bounds)
  std::int64_t true_ub = 0;  // one past the last byte of data
  // Alignment MPI pads a struct's extent to (the largest alignment among the named types inside).
  std::int64_t alignment = 1;
  std::int64_t extent() const { return ub - lb; }
  std::int64_t true_extent() const { return true_ub - true_lb; }
};

class Type {
 public:
  // Each constructor checks its arguments as MPI does (negative counts, mismatched array lengths,
  // subarray bounds, darray grid) and throws InvalidArgument saying what is wrong. Counts,
  // displacements and strides are in the units MPI uses for that constructor: elements of `old`
  // for vector, indexed and indexed_block; bytes for the h- forms, struct and resized.
  // `kind` classes the element for MPI's struct padding rule: a struct whose members all hold
  // elements of one kind is not padded (MPICH: integers of one width share a kind whatever their
  // sign, e.g. "fixed32" for MPI_INT and MPI_UNSIGNED).
  static TypeRef named(std::string name, std::int64_t size, std::int64_t alignment, std::string kind);
  // A predefined value-and-index pair (MPI_DOUBLE_INT, ...): `value` then `index` at the next offset
  // aligned for it, padded to the larger alignment; one element kind of its own.
  static TypeRef named_pair(std::string name, TypeRef value, TypeRef index);
  static TypeRef contiguous(std::int64_t count, TypeRef old);
  static TypeRef vector(std::int64_t count, std::int64_t blocklength, std::int64_t stride, TypeRef old);
  static TypeRef hvector(std::int64_t count, std::int64_t blocklength, std::int64_t stride_bytes, TypeRef old);
  static TypeRef indexed(std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements,
                         TypeRef old);
  static TypeRef hindexed(std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements_bytes,
                          TypeRef old);
  static TypeRef indexed_block(std::int64_t blocklength, std::vector<std::int64_t> displacements, TypeRef old);
  static TypeRef hindexed_block(std::int64_t blocklength, std::vector<std::int64_t> displacements_bytes,
                                TypeRef old);
  static TypeRef struct_(std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements_bytes,
                         std::vector<TypeRef> types);
  static TypeRef subarray(std::vector<std::int64_t> sizes, std::vector<std::int64_t> subsizes,
                          std::vector<std::int64_t> starts, Order order, TypeRef old);
  static TypeRef darray(std::int64_t size, std::int64_t rank, std::vector<std::int64_t> global_sizes,
                        std::vector<Distribution> distributions, std::vector<std::int64_t> distribution_arguments,
                        std::vector<std::int64_t> process_grid, Order order, TypeRef old);
  static TypeRef resized(std::int64_t lb, std::int64_t extent, TypeRef old);
  static TypeRef dup(TypeRef old);

  Combiner combiner() const { return combiner_; }
  const Bounds& bounds() const { return bounds_; }
  std::int64_t size() const { return bounds_.size; }
  std::int64_t extent() const { return bounds_.extent(); }

  // The constructor's arguments, as passed (for describing the type and for tests).
  const std::string& name() const { return name_; }  // named types only
  // The one element kind every data byte belongs to, or "" when members differ.
  const std::string& element_kind() const { return element_kind_; }
  const std::vector<std::int64_t>& integers() const { return integers_; }
  const std::vector<TypeRef>& children() const { return children_; }

  // Nesting depth: 0 for a named type.
  int depth() const { return depth_; }

  // The canonical layout of one object, computed on first call (thread-safe) and kept.
  const Layout& layout() const;
  // The bytes one object's data touches, relative to its origin; computed and kept with the layout.
  const Span& touched() const;

 private:
  Type(Combiner combiner, std::vector<std::int64_t> integers, std::vector<TypeRef> children);

  Combiner combiner_;
  std::string name_;
  std::string element_kind_;
  std::vector<std::int64_t> integers_;
  std::vector<TypeRef> children_;
  // subarray and darray are defined by MPI as compositions of the other constructors; `lowered_`
  // holds that composition (null for the others).
  TypeRef lowered_;
  Bounds bounds_;
  int depth_ = 0;
  mutable std::once_flag layout_once_;
  mutable std::unique_ptr<const Layout> layout_;
  mutable Span touched_;

  friend class TypeBuilder;
};

}  // namespace pycomm::datatype
