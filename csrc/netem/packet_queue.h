// The packets of one emulated link that are "on the wire": a FIFO bounded in bytes, like the
// buffer of a router port.
//
// Why a byte ring and not a queue of buffers: every packet on a link waits the same delay, so
// packets leave in the order they came and a ring of variable-length records is all a link needs.
// It is allocated once, by the link's first packet (and its pages are touched only as traffic
// reaches them), so the steady state allocates nothing per packet; and it holds exactly as many
// bytes as the link may buffer: a flood of 52-byte acknowledgements costs 72 bytes each, not a
// full-size slot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace pycomm::netem {

class PacketQueue {
 public:
  explicit PacketQueue(std::size_t capacity_bytes = 0);

  // Appends a packet that may leave at `deadline_ns` (CLOCK_MONOTONIC); `packets` is how many
  // packets it stands for (a segmentation-offload super-packet: several). False when it does not
  // fit: the caller counts a drop, as a router does when its buffer is full.
  bool push(std::int64_t deadline_ns, const unsigned char* packet, std::uint32_t length, std::uint32_t packets = 1);

  bool empty() const { return records_ == 0; }
  std::int64_t head_deadline() const;
  const unsigned char* head_data() const;
  std::uint32_t head_length() const;
  void pop();

  // Moves the queued packets into a ring of another size, dropping from the tail what no longer
  // fits; returns how many packets were dropped (a super-packet counts as the packets it stands
  // for). Used only when a link's settings change.
  std::size_t resize(std::size_t capacity_bytes);

  std::size_t capacity_bytes() const { return capacity_; }
  // The capacity a queue asked for `bytes` gets (rounded up), and the room a frame of `length`
  // bytes takes in it.
  static std::size_t capacity_for(std::size_t bytes);
  static std::size_t record_bytes(std::uint32_t length);
  std::size_t queued_packets() const { return packets_; }  // super-packets count as what they stand for

 private:
  struct Header {
    std::int64_t deadline_ns;
    std::uint32_t length;
    std::uint32_t packets;
  };

  Header header_at(std::size_t offset) const;
  // After the head record was consumed: skip the unused end of the ring if the next record
  // starts over at offset 0.
  void skip_wrap();

  std::unique_ptr<unsigned char[]> storage_;
  std::size_t capacity_ = 0;
  std::size_t head_ = 0;  // offset of the oldest record
  std::size_t tail_ = 0;  // where the next record goes
  std::size_t used_ = 0;  // bytes between head and tail, the unused end of a wrap included
  std::size_t records_ = 0;
  std::size_t packets_ = 0;
};

}  // namespace pycomm::netem
