// The frame: the unit every pycomm connection carries. A fixed 24-byte header, then `length`
// payload bytes. All fields are little-endian.
//
//   offset  size  field
//        0     4  magic "PYCM"
//        4     2  protocol version (kProtocolVersion)
//        6     2  message type (meaning defined by the layer above; 0 is reserved)
//        8     4  flags (none defined in version 1: must be 0)
//       12     4  reserved (must be 0)
//       16     8  payload length in bytes
//
// The header is validated completely, the length against the receiver's limit included, before a
// single payload byte is allocated or read: a peer cannot make another allocate what it claims.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace pycomm::transport {

inline constexpr std::uint32_t kFrameMagic = 0x4d435950;  // "PYCM" read as little-endian
inline constexpr std::uint16_t kProtocolVersion = 1;
inline constexpr std::size_t kFrameHeaderBytes = 24;
// Default receive limit on one frame's payload; a connection may set a smaller or larger one.
inline constexpr std::uint64_t kDefaultMaxPayload = std::uint64_t{1} << 30;

struct FrameHeader {
  std::uint16_t type = 0;
  std::uint32_t flags = 0;
  std::uint64_t length = 0;
};

using EncodedHeader = std::array<unsigned char, kFrameHeaderBytes>;

EncodedHeader encode_header(const FrameHeader& header);

// Throws ProtocolError naming what is wrong: bad magic, another protocol version, type 0, unknown
// flags, a non-zero reserved field, or a length over `max_payload`.
FrameHeader decode_header(const unsigned char* bytes, std::uint64_t max_payload);

// One whole frame held in memory: `size` must be exactly a header plus its payload.
struct FrameView {
  FrameHeader header;
  const unsigned char* payload;
};
FrameView decode_frame(const unsigned char* bytes, std::size_t size, std::uint64_t max_payload);

}  // namespace pycomm::transport
