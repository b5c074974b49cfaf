#include "transport/frame.h"

#include <cstring>

#include "common/error.h"
#include "common/little_endian.h"

namespace pycomm::transport {
EncodedHeader encode_header(const FrameHeader& header) {
  PYCOMM_ENFORCE(header.type != 0, "frame type 0 is reserved");
  PYCOMM_ENFORCE(header.flags == 0, "no frame flags are defined in protocol version ", kProtocolVersion);
  EncodedHeader out{};
  put_little_endian<std::uint32_t>(out.data(), kFrameMagic);
  put_little_endian<std::uint16_t>(out.data() + 4, kProtocolVersion);
  put_little_endian<std::uint16_t>(out.data() + 6, header.type);
  put_little_endian<std::uint32_t>(out.data() + 8, header.flags);
  put_little_endian<std::uint32_t>(out.data() + 12, 0);
  put_little_endian<std::uint64_t>(out.data() + 16, header.length);
  return out;
}

FrameHeader decode_header(const unsigned char* bytes, std::uint64_t max_payload) {
  const auto magic = get_little_endian<std::uint32_t>(bytes);
  if (magic != kFrameMagic) {
    PYCOMM_THROW(ProtocolError, "not a pycomm frame: magic 0x", std::hex, magic, " instead of 0x", kFrameMagic,
                 " (\"PYCM\")");
  }
  const auto version = get_little_endian<std::uint16_t>(bytes + 4);
  if (version != kProtocolVersion) {
    PYCOMM_THROW(ProtocolError, "peer speaks pycomm protocol version ", version, ", this side speaks version ",
                 kProtocolVersion);
  }
  FrameHeader header;
  header.type = get_little_endian<std::uint16_t>(bytes + 6);
  header.flags = get_little_endian<std::uint32_t>(bytes + 8);
  header.length = get_little_endian<std::uint64_t>(bytes + 16);
  if (header.type == 0) PYCOMM_THROW(ProtocolError, "frame of reserved type 0");
  if (header.flags != 0) {
    PYCOMM_THROW(ProtocolError, "frame flags 0x", std::hex, header.flags, " are not defined in protocol version ",
                 std::dec, kProtocolVersion);
  }
  if (get_little_endian<std::uint32_t>(bytes + 12) != 0) {
    PYCOMM_THROW(ProtocolError, "frame header's reserved field is not zero");
  }
  if (header.length > max_payload) {
    PYCOMM_THROW(ProtocolError, "frame of ", header.length, " payload bytes exceeds this connection's limit of ",
                 max_payload);
  }
  return header;
}

FrameView decode_frame(const unsigned char* bytes, std::size_t size, std::uint64_t max_payload) {
  if (size < kFrameHeaderBytes) {
    PYCOMM_THROW(ProtocolError, "truncated frame: ", size, " of ", kFrameHeaderBytes, " header bytes");
  }
  const FrameHeader header = decode_header(bytes, max_payload);
  const std::size_t available = size - kFrameHeaderBytes;
  if (available < header.length) {
    PYCOMM_THROW(ProtocolError, "truncated frame: ", available, " of ", header.length, " payload bytes");
  }
  if (available > header.length) {
    PYCOMM_THROW(ProtocolError, available - header.length, " bytes after the end of a frame");
  }
  return FrameView{header, bytes + kFrameHeaderBytes};
}

}  // namespace pycomm::transport
