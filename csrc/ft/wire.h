// The data frame of the ring engine: a fixed 48-byte header, then `length` payload bytes.
// Little-endian. The header carries the whole operation (collective, dtype, op, root, count, tag)
// so a receiver can tell that two peers disagree about an operation instead of misreading bytes.
//
//   offset  size  field
//        0     4  magic "PYCD"
//        4     1  phase (ring_op.h Phase)
//        5     1  collective
//        6     1  dtype
//        7     1  reduce op
//        8     4  root (broadcast); wire quantization (all_reduce, wire_codec.h)
//       12     4  step (reduce-scatter / all-gather step; hops travelled for a barrier token)
//       16     8  tag
//       24     8  sequence of the operation among those with this tag in the epoch
//       32     8  count (elements, as OpSpec::count)
//       40     4  segment
//       44     4  payload length in bytes
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "ft/ring_op.h"

namespace pycomm::ft {

inline constexpr std::uint32_t kDataMagic = 0x44435950;  // "PYCD" read as little-endian
inline constexpr std::size_t kDataHeaderBytes = 48;
inline constexpr std::uint64_t kMaxSegmentBytes = std::uint64_t{64} << 20;

struct DataHeader {
  Phase phase = Phase::barrier;
  OpSpec spec;
  std::uint64_t sequence = 0;
  std::uint32_t step = 0;
  std::uint32_t segment = 0;
  std::uint32_t length = 0;
};

using DataHeaderBytes = std::array<unsigned char, kDataHeaderBytes>;

DataHeaderBytes encode_data_header(const DataHeader& header);
// Throws ProtocolError for a bad magic, an unknown phase, collective, dtype or op, or a length
// over kMaxSegmentBytes.
DataHeader decode_data_header(const unsigned char* bytes);

}  // namespace pycomm::ft
