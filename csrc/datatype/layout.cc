#include "datatype/layout.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"

namespace pycomm::datatype {
namespace {

std::int64_t checked_multiply(std::int64_t a, std::int64_t b) {
  std::int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    PYCOMM_THROW(InvalidArgument, "datatype layout overflows 64-bit byte counts (", a, " x ", b, ")");
  }
  return product;
}

std::int64_t checked_add(std::int64_t a, std::int64_t b) {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) {
    PYCOMM_THROW(InvalidArgument, "datatype layout overflows 64-bit byte offsets (", a, " + ", b, ")");
  }
  return sum;
}

bool same_body(const Segment& a, const Segment& b) {
  if (a.body == b.body) return true;
  if (!a.body || !b.body) return false;
  const auto& x = a.body->segments;
  const auto& y = b.body->segments;
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x[i].offset != y[i].offset || x[i].dims != y[i].dims || x[i].block != y[i].block || !same_body(x[i], y[i])) {
      return false;
    }
  }
  return true;
}

// Same loops over the same piece: b is a copy of a somewhere else.
bool same_shape(const Segment& a, const Segment& b) {
  return a.block == b.block && a.dims == b.dims && same_body(a, b);
}

// Brings a segment to canonical form: no loop of count 1, a single-segment body folded into the
// loops around it, loops whose strides nest exactly fused, and inner loops over adjacent blocks
// folded into one larger block. Returns false when the segment holds no bytes.
bool normalise(Segment& segment) {
  for (const Dim& dim : segment.dims) {
    if (dim.count == 0) return false;
  }
  while (segment.body && segment.body->segments.size() == 1) {
    const Segment inner = segment.body->segments[0];
    segment.offset = checked_add(segment.offset, inner.offset);
    segment.dims.insert(segment.dims.end(), inner.dims.begin(), inner.dims.end());
    segment.block = inner.block;
    segment.body = inner.body;
  }
  if (segment.body ? segment.body->packed_bytes == 0 : segment.block == 0) return false;

  auto& dims = segment.dims;
  dims.erase(std::remove_if(dims.begin(), dims.end(), [](const Dim& dim) { return dim.count == 1; }), dims.end());
  bool changed = true;
  while (changed) {
    changed = false;
    // An inner loop over blocks that touch each other is one larger block.
    if (!segment.body && !dims.empty() && dims.back().stride == segment.block) {
      segment.block = checked_multiply(segment.block, dims.back().count);
      dims.pop_back();
      changed = true;
    }
    // Loop (c1, s1) around loop (c2, s2) with s1 == c2 * s2 visits the same addresses, in the same
    // order, as one loop (c1 * c2, s2).
    for (std::size_t i = 0; i + 1 < dims.size(); ++i) {
      if (dims[i].stride == checked_multiply(dims[i + 1].count, dims[i + 1].stride)) {
        dims[i + 1].count = checked_multiply(dims[i].count, dims[i + 1].count);
        dims.erase(dims.begin() + static_cast<std::ptrdiff_t>(i));
        changed = true;
        break;
      }
    }
  }
  return true;
}

// Tries to absorb `next` into `last` (the segment packed just before it). Order is kept: the merged
// segment visits last's bytes and then next's.
bool merge_into(Segment& last, const Segment& next) {
  // Adjacent plain blocks.
  if (!last.body && !next.body && last.dims.empty() && next.dims.empty() &&
      checked_add(last.offset, last.block) == next.offset) {
    last.block = checked_add(last.block, next.block);
    return true;
  }
  // `next` continues a run of copies: last = loop (k, d) over X, next = X at last.offset + k * d.
  if (!last.dims.empty() && last.block == next.block && last.dims.size() == next.dims.size() + 1 &&
      std::equal(last.dims.begin() + 1, last.dims.end(), next.dims.begin()) && same_body(last, next)) {
    const Dim run = last.dims.front();
    if (next.offset == checked_add(last.offset, checked_multiply(run.count, run.stride))) {
      last.dims.front().count += 1;
      normalise(last);
      return true;
    }
  }
  // Two copies of the same piece start a run.
  if (same_shape(last, next)) {
    last.dims.insert(last.dims.begin(), Dim{2, next.offset - last.offset});
    normalise(last);
    return true;
  }
  return false;
}

}  // namespace

std::int64_t Segment::iterations() const {
  std::int64_t total = 1;
  for (const Dim& dim : dims) total *= dim.count;
  return total;
}

std::int64_t Segment::bytes_per_iteration() const { return body ? body->packed_bytes : block; }

std::int64_t Layout::block_count() const {
  std::int64_t total = 0;
  for (const Segment& segment : segments) {
    total += segment.iterations() * (segment.body ? segment.body->block_count() : 1);
  }
  return total;
}

std::int64_t Layout::smallest_block() const {
  std::int64_t smallest = 0;
  for (const Segment& segment : segments) {
    const std::int64_t block = segment.body ? segment.body->smallest_block() : segment.block;
    if (block > 0 && (smallest == 0 || block < smallest)) smallest = block;
  }
  return smallest;
}

std::string Layout::describe() const {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const Segment& segment = segments[i];
    if (i) out << ", ";
    out << "@" << segment.offset;
    for (const Dim& dim : segment.dims) out << " " << dim.count << "x" << dim.stride;
    if (segment.body) {
      out << " " << segment.body->describe();
    } else {
      out << " " << segment.block << "B";
    }
  }
  out << "]";
  return out.str();
}

Layout block_layout(std::int64_t bytes) {
  Layout layout;
  if (bytes > 0) {
    layout.segments.push_back(Segment{0, {}, bytes, nullptr});
    layout.packed_bytes = bytes;
  }
  return layout;
}

Layout repeat_layout(const Layout& inner, std::int64_t count, std::int64_t stride) {
  if (count == 1) return inner;
  Layout result;
  if (count <= 0 || inner.packed_bytes == 0) return result;
  Segment segment;
  if (inner.segments.size() == 1) {
    segment = inner.segments[0];
    segment.dims.insert(segment.dims.begin(), Dim{count, stride});
  } else {
    segment.dims.push_back(Dim{count, stride});
    segment.body = std::make_shared<const Layout>(inner);
  }
  normalise(segment);
  result.packed_bytes = checked_multiply(inner.packed_bytes, count);
  result.segments.push_back(std::move(segment));
  return result;
}

Layout shift_layout(const Layout& inner, std::int64_t offset) {
  Layout result = inner;
  for (Segment& segment : result.segments) segment.offset = checked_add(segment.offset, offset);
  return result;
}

void append_layout(Layout& into, const Layout& more) {
  auto& segments = into.segments;
  for (const Segment& segment : more.segments) {
    if (segments.empty() || !merge_into(segments.back(), segment)) {
      segments.push_back(segment);
      continue;
    }
    // A merge can make the last segment continue the run before it (blocks 0+4, then 8: the first
    // two fold into one 8-byte block that the third extends).
    while (segments.size() >= 2 && merge_into(segments[segments.size() - 2], segments.back())) segments.pop_back();
  }
  into.packed_bytes = checked_add(into.packed_bytes, more.packed_bytes);
}

Layout concat_layouts(const Layout& first, const Layout& second) {
  Layout result = first;
  append_layout(result, second);
  return result;
}

namespace {

void extend_span(const Layout& layout, std::int64_t base, Span& span, bool& any) {
  for (const Segment& segment : layout.segments) {
    // Each loop reaches furthest at its first or last index, whatever the sign of its stride.
    std::int64_t low = base + segment.offset;
    std::int64_t high = low;
    for (const Dim& dim : segment.dims) {
      const std::int64_t reach = (dim.count - 1) * dim.stride;
      (reach < 0 ? low : high) += reach;
    }
    if (segment.body) {
      const Span inner = layout_span(*segment.body);
      if (inner.begin == inner.end) continue;
      low += inner.begin;
      high += inner.end;
    } else {
      high += segment.block;
    }
    span = any ? Span{std::min(span.begin, low), std::max(span.end, high)} : Span{low, high};
    any = true;
  }
}

}  // namespace

Span layout_span(const Layout& layout) {
  Span span;
  bool any = false;
  extend_span(layout, 0, span, any);
  return span;
}

namespace {

void flatten_into(const Layout& layout, std::int64_t base, std::int64_t& packed, std::int64_t max_blocks,
                  std::vector<FlatBlock>& out) {
  for (const Segment& segment : layout.segments) {
    if (!segment.body) {
      if (static_cast<std::int64_t>(out.size()) >= max_blocks) {
        PYCOMM_THROW(NotSupported, "datatype layout has more than ", max_blocks, " strided pieces");
      }
      out.push_back(FlatBlock{packed, base + segment.offset, segment.block, segment.dims});
      packed += segment.packed_bytes();
      continue;
    }
    // Expand the loops around a nested layout, outermost slowest.
    std::vector<std::int64_t> index(segment.dims.size(), 0);
    const std::int64_t iterations = segment.iterations();
    for (std::int64_t i = 0; i < iterations; ++i) {
      std::int64_t offset = base + segment.offset;
      for (std::size_t d = 0; d < index.size(); ++d) offset += index[d] * segment.dims[d].stride;
      flatten_into(*segment.body, offset, packed, max_blocks, out);
      for (std::size_t d = index.size(); d-- > 0;) {
        if (++index[d] < segment.dims[d].count) break;
        index[d] = 0;
      }
    }
  }
}

}  // namespace

std::vector<FlatBlock> flatten_layout(const Layout& layout, std::int64_t max_blocks) {
  std::vector<FlatBlock> out;
  std::int64_t packed = 0;
  flatten_into(layout, 0, packed, max_blocks, out);
  return out;
}

}  // namespace pycomm::datatype
