#include "datatype/pack.h"

#include <algorithm>
#include <cstring>

namespace pycomm::datatype {
namespace {

// Copies `rows` blocks of `block` bytes between the strided side (row i at strided + i * stride)
// and the packed side (row i at packed + i * block). One routine per block size class, chosen once
// per leaf loop: fixed-size moves for small blocks (the compiler turns them into a few register
// moves, unaligned moves cost nothing extra on x86-64 and aarch64), memcpy beyond.
using RowCopy = void (*)(std::byte* packed, std::byte* strided, std::int64_t rows, std::int64_t stride,
                         std::int64_t block);

// Rows this many strides ahead are prefetched when rows lie far apart (each row a new cache line,
// often a new page): the hardware prefetcher does not follow such strides across pages, so every
// row would otherwise wait for memory in turn.
// Only worth it where the rows span more than the caches hold: over cached rows the extra instruction
// per row costs more than it saves.
inline constexpr std::int64_t kPrefetchRows = 16;
inline constexpr std::int64_t kFarStride = 256;
inline constexpr std::int64_t kUncachedSpan = std::int64_t{2} << 20;

inline bool far_apart(std::int64_t rows, std::int64_t stride) {
  const std::int64_t distance = stride < 0 ? -stride : stride;
  return rows > 2 * kPrefetchRows && distance >= kFarStride && rows * distance >= kUncachedSpan;
}

template <bool kPack, std::int64_t kBlock>
void copy_rows_fixed(std::byte* packed, std::byte* strided, std::int64_t rows, std::int64_t stride, std::int64_t) {
  std::int64_t i = 0;
  // Prefetching past the last row would be harmless (a prefetch never faults), but is not needed.
  if (far_apart(rows, stride)) {
    if constexpr (kPack) {
      // Four rows a step, their loads issued before their stores, so several misses are in flight.
      for (; i + 4 <= rows - kPrefetchRows; i += 4) {
        for (std::int64_t k = 0; k < 4; ++k) __builtin_prefetch(strided + (i + k + kPrefetchRows) * stride, 0);
        unsigned char rows_data[4][kBlock];
        for (std::int64_t k = 0; k < 4; ++k) std::memcpy(rows_data[k], strided + (i + k) * stride, kBlock);
        for (std::int64_t k = 0; k < 4; ++k) std::memcpy(packed + (i + k) * kBlock, rows_data[k], kBlock);
      }
    } else {
      // Scattered stores already overlap in the store buffer; unrolling them measured no gain.
      for (; i < rows - kPrefetchRows; ++i) {
        __builtin_prefetch(strided + (i + kPrefetchRows) * stride, 1);
        std::memcpy(strided + i * stride, packed + i * kBlock, kBlock);
      }
    }
  }
  for (; i < rows; ++i) {
    if constexpr (kPack) {
      std::memcpy(packed + i * kBlock, strided + i * stride, kBlock);
    } else {
      std::memcpy(strided + i * stride, packed + i * kBlock, kBlock);
    }
  }
}

// Blocks that are a multiple of 16 bytes, up to a few hundred: a loop of 16-byte moves beats a
// memcpy call per block.
template <bool kPack>
void copy_rows_sixteens(std::byte* packed, std::byte* strided, std::int64_t rows, std::int64_t stride,
                        std::int64_t block) {
  for (std::int64_t i = 0; i < rows; ++i) {
    std::byte* from = kPack ? strided + i * stride : packed + i * block;
    std::byte* to = kPack ? packed + i * block : strided + i * stride;
    for (std::int64_t j = 0; j < block; j += 16) {
      unsigned char chunk[16];
      std::memcpy(chunk, from + j, 16);
      std::memcpy(to + j, chunk, 16);
    }
  }
}

template <bool kPack>
void copy_rows_memcpy(std::byte* packed, std::byte* strided, std::int64_t rows, std::int64_t stride,
                      std::int64_t block) {
  for (std::int64_t i = 0; i < rows; ++i) {
    if constexpr (kPack) {
      std::memcpy(packed + i * block, strided + i * stride, static_cast<std::size_t>(block));
    } else {
      std::memcpy(strided + i * stride, packed + i * block, static_cast<std::size_t>(block));
    }
  }
}

template <bool kPack>
RowCopy choose_row_copy(std::int64_t block) {
  switch (block) {
    case 1: return copy_rows_fixed<kPack, 1>;
    case 2: return copy_rows_fixed<kPack, 2>;
    case 3: return copy_rows_fixed<kPack, 3>;
    case 4: return copy_rows_fixed<kPack, 4>;
    case 6: return copy_rows_fixed<kPack, 6>;
    case 8: return copy_rows_fixed<kPack, 8>;
    case 12: return copy_rows_fixed<kPack, 12>;
    case 16: return copy_rows_fixed<kPack, 16>;
    case 24: return copy_rows_fixed<kPack, 24>;
    case 32: return copy_rows_fixed<kPack, 32>;
    case 48: return copy_rows_fixed<kPack, 48>;
    case 64: return copy_rows_fixed<kPack, 64>;
    case 128: return copy_rows_fixed<kPack, 128>;
    default: break;
  }
  if (block % 16 == 0 && block < 256) return copy_rows_sixteens<kPack>;
  return copy_rows_memcpy<kPack>;
}

// Walks a layout over a range of its packed bytes, in packed order.
template <bool kPack>
class Walker {
 public:
  // `packed` is where packed byte `lo` of the layout goes (or comes from).
  void layout(const Layout& layout, std::byte* origin, std::int64_t lo, std::int64_t hi, std::byte* packed) {
    std::int64_t start = 0;
    for (const Segment& segment : layout.segments) {
      const std::int64_t bytes = segment.packed_bytes();
      const std::int64_t a = std::max(lo, start);
      const std::int64_t b = std::min(hi, start + bytes);
      if (a < b) this->segment(segment, origin + segment.offset, a - start, b - start, packed + (a - lo));
      start += bytes;
      if (start >= hi) break;
    }
  }

 private:
  void segment(const Segment& segment, std::byte* base, std::int64_t lo, std::int64_t hi, std::byte* packed) {
    const std::int64_t per_iteration = segment.bytes_per_iteration();
    std::int64_t iteration = lo / per_iteration;
    const std::int64_t end_iteration = (hi + per_iteration - 1) / per_iteration;
    std::int64_t position = lo;
    while (iteration < end_iteration) {
      const std::int64_t iteration_start = iteration * per_iteration;
      const bool whole = position == iteration_start && hi >= iteration_start + per_iteration;
      if (segment.body || !whole) {
        // A nested layout, or a block cut by the range: one iteration at a time.
        const std::int64_t a = position - iteration_start;
        const std::int64_t b = std::min(hi - iteration_start, per_iteration);
        std::byte* at = base + address(segment.dims, iteration);
        if (segment.body) {
          layout(*segment.body, at, a, b, packed);
        } else {
          copy_bytes(packed, at + a, b - a);
        }
        packed += b - a;
        position = iteration_start + b;
        ++iteration;
        continue;
      }
      // A run of whole blocks: the leaf loop, row by row along the innermost dimension.
      const std::int64_t whole_end = std::min(end_iteration, hi / per_iteration);
      const std::int64_t rows = leaf_rows(segment, base, iteration, whole_end, packed);
      packed += rows * per_iteration;
      position += rows * per_iteration;
      iteration += rows;
    }
  }

  // Copies whole blocks [first, end) of a leaf segment; returns end - first.
  std::int64_t leaf_rows(const Segment& segment, std::byte* base, std::int64_t first, std::int64_t end,
                         std::byte* packed) {
    const std::int64_t block = segment.block;
    const RowCopy copy = choose_row_copy<kPack>(block);
    if (segment.dims.empty()) {
      copy(packed, base, 1, 0, block);
      return 1;
    }
    const auto& dims = segment.dims;
    const std::size_t inner = dims.size() - 1;
    // The index of `first` in each loop, outermost first.
    std::int64_t index[kMaxTrackedDims];
    std::vector<std::int64_t> spill;
    std::int64_t* digits = index;
    if (dims.size() > kMaxTrackedDims) {
      spill.resize(dims.size());
      digits = spill.data();
    }
    std::int64_t rest = first;
    std::int64_t offset = 0;
    for (std::size_t d = dims.size(); d-- > 0;) {
      digits[d] = rest % dims[d].count;
      rest /= dims[d].count;
      offset += digits[d] * dims[d].stride;
    }
    std::int64_t done = 0;
    const std::int64_t total = end - first;
    while (done < total) {
      const std::int64_t rows = std::min(dims[inner].count - digits[inner], total - done);
      copy(packed + done * block, base + offset, rows, dims[inner].stride, block);
      done += rows;
      offset += rows * dims[inner].stride;
      digits[inner] += rows;
      // Carry into the outer loops.
      for (std::size_t d = inner; d > 0 && digits[d] == dims[d].count; --d) {
        offset -= digits[d] * dims[d].stride;
        digits[d] = 0;
        digits[d - 1] += 1;
        offset += dims[d - 1].stride;
      }
    }
    return total;
  }

  static std::int64_t address(const std::vector<Dim>& dims, std::int64_t iteration) {
    std::int64_t offset = 0;
    for (std::size_t d = dims.size(); d-- > 0;) {
      offset += (iteration % dims[d].count) * dims[d].stride;
      iteration /= dims[d].count;
    }
    return offset;
  }

  static void copy_bytes(std::byte* packed, std::byte* strided, std::int64_t bytes) {
    if constexpr (kPack) {
      std::memcpy(packed, strided, static_cast<std::size_t>(bytes));
    } else {
      std::memcpy(strided, packed, static_cast<std::size_t>(bytes));
    }
  }

  static constexpr std::size_t kMaxTrackedDims = 16;
};

// Runs `walk(layout, origin, lo, hi, buffer)` over packed bytes [first, end) of `objects`. One
// segment (a strided block): the objects become one more loop around it, so dense objects fold into
// one block. Several segments: object by object, without copying the layout.
template <typename Walk, typename Buffer>
void walk_objects(const Objects& objects, std::byte* origin, std::int64_t first, std::int64_t end, Buffer buffer,
                  Walk walk) {
  const Layout& layout = *objects.layout;
  if (objects.count == 1) {
    walk(layout, origin, first, end, buffer);
    return;
  }
  if (layout.segments.size() == 1) {
    walk(repeat_layout(layout, objects.count, objects.extent), origin, first, end, buffer);
    return;
  }
  const std::int64_t size = layout.packed_bytes;
  for (std::int64_t object = first / size; object * size < end; ++object) {
    const std::int64_t start = object * size;
    const std::int64_t lo = std::max(first, start) - start;
    const std::int64_t hi = std::min(end, start + size) - start;
    walk(layout, origin + object * objects.extent, lo, hi, buffer + (start + lo - first));
  }
}

}  // namespace

std::int64_t pack(const Objects& objects, const std::byte* origin, std::byte* out, std::int64_t first,
                  std::int64_t max_bytes) {
  const std::int64_t total = objects.packed_bytes();
  if (first >= total || max_bytes <= 0 || first < 0) return 0;
  const std::int64_t end = total - first < max_bytes ? total : first + max_bytes;
  walk_objects(objects, const_cast<std::byte*>(origin), first, end, out,
               [](const Layout& layout, std::byte* at, std::int64_t lo, std::int64_t hi, std::byte* packed) {
                 Walker<true>().layout(layout, at, lo, hi, packed);
               });
  return end - first;
}

std::int64_t unpack(const Objects& objects, const std::byte* in, std::byte* origin, std::int64_t first,
                    std::int64_t max_bytes) {
  const std::int64_t total = objects.packed_bytes();
  if (first >= total || max_bytes <= 0 || first < 0) return 0;
  const std::int64_t end = total - first < max_bytes ? total : first + max_bytes;
  walk_objects(objects, origin, first, end, const_cast<std::byte*>(in),
               [](const Layout& layout, std::byte* at, std::int64_t lo, std::int64_t hi, std::byte* packed) {
                 Walker<false>().layout(layout, at, lo, hi, packed);
               });
  return end - first;
}

bool fits_in_64_bits(const Objects& objects) {
  if (objects.count <= 1) return true;
  std::int64_t product = 0;
  return !__builtin_mul_overflow(objects.count, objects.layout->packed_bytes, &product) &&
         !__builtin_mul_overflow(objects.count - 1, objects.extent, &product) &&
         !__builtin_add_overflow(product, objects.extent < 0 ? -objects.extent : objects.extent, &product);
}

Span span(const Objects& objects, const Span& one_object) {
  if (objects.count <= 0 || one_object.begin == one_object.end) return Span{};
  // Objects are copies of one another, `extent` apart: the first and the last bound the rest.
  const std::int64_t reach = (objects.count - 1) * objects.extent;
  return Span{one_object.begin + std::min<std::int64_t>(reach, 0), one_object.end + std::max<std::int64_t>(reach, 0)};
}

Span span(const Objects& objects) { return span(objects, layout_span(*objects.layout)); }

}  // namespace pycomm::datatype
