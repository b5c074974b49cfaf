// The canonical form of a datatype: where its bytes are, in the order MPI_Pack writes them.
//
// A Layout is a list of segments packed one after another. A segment is a loop nest (dims, outermost
// first) over either a contiguous block of bytes or a nested layout. A type built from named,
// contiguous, vector, hvector, subarray and resized types canonicalises to one segment over a
// block: a StridedBlock of any number of dimensions. Indexed and struct types whose pieces do not
// line up become several segments: the compressed offset/length list (runs of equal pieces at equal
// distance are folded into a loop).
//
// Canonicalisation never changes the packed byte order: it merges adjacent pieces, folds dense
// loops into larger blocks, drops loops of count 1 and fuses loops whose strides nest exactly. It
// never sorts strides: visiting loops in another order writes bytes in another order (the bug that
// lets TEMPI's stride sort disagree with MPI_Pack).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pycomm::datatype {

struct Dim {
  std::int64_t count;
  std::int64_t stride;  // bytes between iterations; may be negative or zero
  bool operator==(const Dim& other) const { return count == other.count && stride == other.stride; }
};

struct Layout;

struct Segment {
  std::int64_t offset = 0;  // bytes from the object's origin to the first iteration
  std::vector<Dim> dims;    // outermost first; every count >= 2 after canonicalisation
  std::int64_t block = 0;   // bytes copied per iteration when body is null
  std::shared_ptr<const Layout> body;  // else: the layout copied per iteration, relative to it

  std::int64_t iterations() const;
  std::int64_t bytes_per_iteration() const;
  std::int64_t packed_bytes() const { return iterations() * bytes_per_iteration(); }
  bool is_strided_block() const { return body == nullptr; }
};

struct Layout {
  std::vector<Segment> segments;
  std::int64_t packed_bytes = 0;  // sum over segments

  // One segment over a block: the type is an N-D strided block.
  bool is_strided_block() const { return segments.size() == 1 && segments[0].is_strided_block(); }
  // Counts every leaf block the layout copies (product of loops, through nested layouts).
  std::int64_t block_count() const;
  // The smallest leaf block, in bytes (0 for an empty layout).
  std::int64_t smallest_block() const;
  std::string describe() const;
};

// The byte range [begin, end) relative to an object's origin that its layout touches (begin == end
// when it holds no data). Exact for any sign of stride.
struct Span {
  std::int64_t begin = 0;
  std::int64_t end = 0;
};
Span layout_span(const Layout& layout);

// Layouts are built bottom-up by these, which canonicalise as they go.
Layout block_layout(std::int64_t bytes);  // one contiguous block at offset 0
// `count` copies of `inner`, `stride` bytes apart (a loop around it).
Layout repeat_layout(const Layout& inner, std::int64_t count, std::int64_t stride);
// `inner` moved by `offset` bytes.
Layout shift_layout(const Layout& inner, std::int64_t offset);
// `first` then `second`, packed in that order.
Layout concat_layouts(const Layout& first, const Layout& second);
void append_layout(Layout& into, const Layout& more);

// A flat list of strided blocks with the packed offset where each starts: what the GPU kernels and
// the interposer's send path walk. Nested layouts are expanded; throws NotSupported if that would
// take more than max_blocks entries.
struct FlatBlock {
  std::int64_t packed_offset;
  std::int64_t offset;
  std::int64_t block;
  std::vector<Dim> dims;
};
std::vector<FlatBlock> flatten_layout(const Layout& layout, std::int64_t max_blocks);

}  // namespace pycomm::datatype
