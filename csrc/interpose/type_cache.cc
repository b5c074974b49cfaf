// The handle -> type map of type_cache.h.
#include "interpose/type_cache.h"

#include <utility>

namespace pycomm::interpose {

CachedTypeRef make_cached_type(datatype::TypeRef type) {
  auto entry = std::make_shared<CachedType>();
  entry->layout = &type->layout();
  entry->size = type->size();
  entry->extent = type->extent();
  const datatype::Layout& layout = *entry->layout;
  const bool one_block = layout.segments.size() == 1 && layout.segments[0].is_strided_block() &&
                         layout.segments[0].dims.empty();
  entry->contiguous = entry->size == 0 || (one_block && layout.segments[0].block == entry->extent);
  entry->type = std::move(type);
  return entry;
}

void TypeCache::insert(MPI_Datatype handle, CachedTypeRef entry) {
  std::lock_guard<std::mutex> lock(mutex_);
  entries_[handle] = std::move(entry);
  size_.store(static_cast<std::int64_t>(entries_.size()), std::memory_order_relaxed);
}

void TypeCache::erase(MPI_Datatype handle) {
  if (size() == 0) {
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.erase(handle);
  size_.store(static_cast<std::int64_t>(entries_.size()), std::memory_order_relaxed);
}

CachedTypeRef TypeCache::find(MPI_Datatype handle) const {
  if (size() == 0) {
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = entries_.find(handle);
  return found == entries_.end() ? nullptr : found->second;
}

TypeCache& type_cache() {
  // Never destroyed: wrappers may still run while static destructors do (MPI_Finalize from an
  // atexit handler).
  static TypeCache* const cache = new TypeCache();
  return *cache;
}

}  // namespace pycomm::interpose
