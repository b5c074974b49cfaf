// Overlap rules for kernel arguments. Every kernel loop is element-wise and promises the
// vectoriser (`#pragma GCC ivdep`) that two buffers are either the same elements or disjoint; a
// partial overlap would give results that differ between instruction sets, so it is refused here.
#pragma once

#include <cstddef>
#include <initializer_list>

#include "common/error.h"


namespace pycomm::kernels {

inline bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  const auto* x = static_cast<const unsigned char*>(a);
  const auto* y = static_cast<const unsigned char*>(b);
  return a_bytes != 0 && b_bytes != 0 && x < y + b_bytes && y < x + a_bytes;
}

// True when the buffers share bytes without being (where `same_allowed`, and both have the same
// size) exactly the same elements.
inline bool partially_overlap(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes,
                              bool same_allowed) {
  return overlaps(a, a_bytes, b, b_bytes) && !(same_allowed && a == b && a_bytes == b_bytes);
}

struct Region {
  const void* data;
  std::size_t bytes;
  const char* name;
};

// Throws InvalidArgument naming the first two regions that share a byte (`what`: the operation).
inline void check_disjoint(std::initializer_list<Region> regions, const char* what) {
  for (auto a = regions.begin(); a != regions.end(); ++a) {
    for (auto b = a + 1; b != regions.end(); ++b) {
      PYCOMM_ENFORCE(!overlaps(a->data, a->bytes, b->data, b->bytes), what, ": ", a->name, " and ", b->name,
                     " overlap");
    }
  }
}

}  // namespace pycomm::kernels
