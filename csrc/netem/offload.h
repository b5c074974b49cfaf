// Segmentation offload across the relay: TUN devices opened with a virtio-net header hand the relay
// a TCP/IPv4 "super-packet" of up to 64 KiB that the sending kernel would otherwise have cut into
// MSS-sized packets, and accept one back on the receiving side, which the receiving TCP takes like
// a packet its NIC coalesced. One read and one write then move up to ~45 packets, not one each.
//
// The links still act on packets: a frame stands for `segments` packets, each of which the relay
// drops with the link's loss probability; when one is lost, the survivors around it leave as
// smaller frames (`build_run`), with the sequence numbers, IP identifiers and lengths the packets
// would have had. The frames' checksums are left to the receiving kernel (NEEDS_CSUM), as the
// sending one left them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pycomm::netem {

// struct virtio_net_hdr of <linux/virtio_net.h> (whose control structures do not compile as C++),
// in the host's byte order, as TUN uses it unless told otherwise.
struct VirtioNetHeader {
  std::uint8_t flags;
  std::uint8_t gso_type;
  std::uint16_t hdr_len;
  std::uint16_t gso_size;
  std::uint16_t csum_start;
  std::uint16_t csum_offset;
};
static_assert(sizeof(VirtioNetHeader) == 10, "virtio_net_hdr is 10 bytes");

constexpr std::uint8_t kVirtioNeedsChecksum = 1;  // VIRTIO_NET_HDR_F_NEEDS_CSUM
constexpr std::uint8_t kVirtioGsoNone = 0;        // VIRTIO_NET_HDR_GSO_NONE
constexpr std::uint8_t kVirtioGsoTcpV4 = 1;       // VIRTIO_NET_HDR_GSO_TCPV4
constexpr std::uint8_t kVirtioGsoEcn = 0x80;      // VIRTIO_NET_HDR_GSO_ECN
constexpr std::size_t kOffloadHeaderBytes = sizeof(VirtioNetHeader);

// One frame as a TUN device with a virtio-net header exchanges it: the header, then an IP packet.
struct OffloadFrame {
  // Reads the frame's header and, for a TCP/IPv4 super-packet whose headers agree with each other,
  // its layout; anything else is one packet that cannot be split (`splittable` false).
  OffloadFrame(const unsigned char* frame, std::uint32_t length);

  const unsigned char* frame;
  std::uint32_t length;
  std::uint32_t segments = 1;         // packets the frame stands for
  std::uint32_t header_bytes = 0;     // IP + TCP header of each packet (splittable frames)
  std::uint32_t segment_payload = 0;  // the MSS: payload of every packet but the last
  std::uint32_t payload = 0;          // TCP payload of the whole frame
  bool splittable = false;

  // The IP packet without the virtio-net header.
  const unsigned char* packet() const { return frame + kOffloadHeaderBytes; }
  std::uint32_t packet_length() const { return length - static_cast<std::uint32_t>(kOffloadHeaderBytes); }
  // Bytes the packets would put on the wire (each with its own IP + TCP header).
  std::uint64_t wire_bytes() const;
  // Writes into `out` (room for `length` bytes) the frame of packets [first, first + count) and
  // returns its length. Only for splittable frames, with first + count <= segments.
  std::uint32_t build_run(std::uint32_t first, std::uint32_t count, unsigned char* out) const;
};

}  // namespace pycomm::netem
