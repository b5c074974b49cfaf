// CPU pack and unpack over a canonical layout: bytes in MPI_Pack's order. Each leaf loop is run by
// a copy routine chosen once per segment for its block size and alignment (fixed-size moves for
// small blocks, memcpy for large ones). Partial packs (first packed byte + a byte budget) let a
// sender pipeline a large object in pieces; a piece may start or end inside a block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "datatype/layout.h"

namespace pycomm::datatype {

// Where the objects are: `count` objects of `layout`, object i at origin + i * extent.
struct Objects {
  const Layout* layout;
  std::int64_t count;
  std::int64_t extent;
  std::int64_t packed_bytes() const { return count * layout->packed_bytes; }
};

// Whether the packed size and the byte span of `objects` fit 64-bit arithmetic. Callers check this
// before anything else: pack, unpack and span() assume it (a count of 2^61 objects of 8 bytes would
// otherwise wrap to 0 bytes).
bool fits_in_64_bits(const Objects& objects);

// Packs packed bytes [first, first + max_bytes) of `objects` (clipped at the end of the data) from
// the buffer at `origin` into `out`; returns the bytes written. No bounds are checked here: the
// caller has checked that every byte the layout touches lies inside its buffer (see span()).
std::int64_t pack(const Objects& objects, const std::byte* origin, std::byte* out, std::int64_t first = 0,
                  std::int64_t max_bytes = INT64_MAX);

// The inverse: scatters `in` (packed bytes [first, first + max_bytes)) into the buffer at `origin`.
std::int64_t unpack(const Objects& objects, const std::byte* in, std::byte* origin, std::int64_t first = 0,
                    std::int64_t max_bytes = INT64_MAX);

// The byte range [begin, end) relative to the origin that pack/unpack of `objects` touch (empty when
// no data). `one_object` is layout_span(*objects.layout), when the caller has it at hand (a committed
// type keeps it: Type::touched()).
Span span(const Objects& objects);
Span span(const Objects& objects, const Span& one_object);

}  // namespace pycomm::datatype
