// MPI datatype handle -> pycomm type, filled at MPI_Type_commit and emptied at MPI_Type_free.
//
// Only committed types can carry data, so decoding at commit sees every type a transfer can use
// (except duplicates of committed types, which MPI commits without a call: those go to MPI). A
// handle that is not here is simply left to MPI. Entries are shared pointers: a transfer in flight
// keeps its type alive after the program frees the handle. Thread-safe: one mutex guards the map,
// and a lookup only copies a shared pointer under it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "datatype/layout.h"
#include "datatype/type.h"
#include "interpose/mpi_api.h"

namespace pycomm::interpose {

struct CachedType {
  datatype::TypeRef type;
  const datatype::Layout* layout = nullptr;  // type->layout(), owned by `type`
  std::int64_t size = 0;                     // packed bytes of one object
  std::int64_t extent = 0;                   // step between consecutive objects
  // Consecutive objects form one block of bytes: MPI moves them without packing, so there is
  // nothing for pycomm to do.
  bool contiguous = false;
};
using CachedTypeRef = std::shared_ptr<const CachedType>;

// The entry for a decoded type (layout computed now, so no transfer pays for it later).
CachedTypeRef make_cached_type(datatype::TypeRef type);

class TypeCache {
 public:
  void insert(MPI_Datatype handle, CachedTypeRef entry);
  void erase(MPI_Datatype handle);
  // Null when the handle was never committed here (or decoding failed).
  CachedTypeRef find(MPI_Datatype handle) const;
  std::int64_t size() const { return size_.load(std::memory_order_relaxed); }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<MPI_Datatype, CachedTypeRef> entries_;
  std::atomic<std::int64_t> size_{0};  // read without the lock: empty cache, no locking
};

TypeCache& type_cache();

}  // namespace pycomm::interpose
