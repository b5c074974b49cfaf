#include "netem/offload.h"

#include <algorithm>
#include <cstring>

namespace pycomm::netem {
namespace {

constexpr unsigned kTcpProtocol = 6;
constexpr unsigned char kTcpFin = 0x01;
constexpr unsigned char kTcpPush = 0x08;
constexpr unsigned char kTcpCwr = 0x80;
constexpr std::uint16_t kTcpChecksumOffset = 16;

std::uint16_t load16(const unsigned char* at) { return static_cast<std::uint16_t>(at[0] << 8 | at[1]); }

std::uint32_t load32(const unsigned char* at) {
  return std::uint32_t{at[0]} << 24 | std::uint32_t{at[1]} << 16 | std::uint32_t{at[2]} << 8 | at[3];
}

void store16(unsigned char* at, std::uint32_t value) {
  at[0] = static_cast<unsigned char>(value >> 8);
  at[1] = static_cast<unsigned char>(value);
}

void store32(unsigned char* at, std::uint32_t value) {
  store16(at, value >> 16);
  store16(at + 2, value);
}

// The ones'-complement sum of big-endian 16-bit words, folded to 16 bits.
std::uint32_t fold(std::uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint32_t>(sum);
}

std::uint64_t sum_words(const unsigned char* data, std::size_t bytes) {
  std::uint64_t sum = 0;
  for (std::size_t at = 0; at + 1 < bytes; at += 2) sum += load16(data + at);
  if (bytes % 2) sum += std::uint32_t{data[bytes - 1]} << 8;
  return sum;
}

VirtioNetHeader read_header(const unsigned char* frame) {
  VirtioNetHeader header;
  std::memcpy(&header, frame, sizeof header);
  return header;
}

}  // namespace

OffloadFrame::OffloadFrame(const unsigned char* frame_bytes, std::uint32_t frame_length)
    : frame(frame_bytes), length(frame_length) {
  if (length < kOffloadHeaderBytes + 20) return;
  const VirtioNetHeader header = read_header(frame);
  if ((header.gso_type & ~kVirtioGsoEcn) != kVirtioGsoTcpV4 || header.gso_size == 0) return;
  const unsigned char* ip = packet();
  const std::uint32_t ip_bytes = (ip[0] & 0x0fu) * 4;
  if ((ip[0] >> 4) != 4 || ip[9] != kTcpProtocol || ip_bytes < 20 || load16(ip + 2) != packet_length() ||
      packet_length() < ip_bytes + 20) {
    return;
  }
  const std::uint32_t tcp_bytes = (ip[ip_bytes + 12] >> 4) * 4u;
  if (tcp_bytes < 20 || packet_length() < ip_bytes + tcp_bytes) return;
  header_bytes = ip_bytes + tcp_bytes;
  segment_payload = header.gso_size;
  payload = packet_length() - header_bytes;
  segments = std::max<std::uint32_t>(1, (payload + segment_payload - 1) / segment_payload);
  splittable = true;
}

std::uint64_t OffloadFrame::wire_bytes() const {
  return packet_length() + std::uint64_t{segments - 1} * header_bytes;
}

std::uint32_t OffloadFrame::build_run(std::uint32_t first, std::uint32_t count, unsigned char* out) const {
  const std::uint32_t begin = first * segment_payload;
  const std::uint32_t end = std::min(payload, (first + count) * segment_payload);
  const std::uint32_t ip_bytes = (packet()[0] & 0x0fu) * 4;
  const std::uint32_t packet_bytes = header_bytes + (end - begin);

  VirtioNetHeader header = read_header(frame);
  header.flags = kVirtioNeedsChecksum;
  header.csum_start = static_cast<std::uint16_t>(ip_bytes);
  header.csum_offset = kTcpChecksumOffset;
  header.hdr_len = static_cast<std::uint16_t>(header_bytes);
  if (count == 1) {
    header.gso_type = kVirtioGsoNone;
    header.gso_size = 0;
  }
  std::memcpy(out, &header, sizeof header);
  unsigned char* ip = out + kOffloadHeaderBytes;
  std::memcpy(ip, packet(), header_bytes);
  std::memcpy(ip + header_bytes, packet() + header_bytes + begin, end - begin);

  // IPv4: this run's length, the identifier its first packet had, a fresh header checksum.
  store16(ip + 2, packet_bytes);
  store16(ip + 4, load16(ip + 4) + first);
  store16(ip + 10, 0);
  store16(ip + 10, ~fold(sum_words(ip, ip_bytes)) & 0xffff);

  // TCP: the first packet's sequence number; CWR only on the frame's first packet, FIN and PSH only
  // on its last, as segmentation would have left them.
  unsigned char* tcp = ip + ip_bytes;
  store32(tcp + 4, load32(tcp + 4) + begin);
  if (first != 0) tcp[13] &= static_cast<unsigned char>(~kTcpCwr);
  if (first + count < segments) tcp[13] &= static_cast<unsigned char>(~(kTcpFin | kTcpPush));
  // NEEDS_CSUM: the field holds the pseudo-header sum; the receiving kernel adds the rest.
  const std::uint64_t pseudo = sum_words(ip + 12, 8) + kTcpProtocol + (packet_bytes - ip_bytes);
  store16(tcp + kTcpChecksumOffset, fold(pseudo));
  return static_cast<std::uint32_t>(kOffloadHeaderBytes) + packet_bytes;
}

}  // namespace pycomm::netem
