#include "netem/packet_queue.h"

#include <cstring>
#include <limits>
#include <utility>

namespace pycomm::netem {
namespace {

constexpr std::size_t kAlignment = 8;
// Written where a record did not fit before the end of the ring: the next record is at offset 0.
constexpr std::uint32_t kWrapMarker = std::numeric_limits<std::uint32_t>::max();

std::size_t round_up(std::size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

PacketQueue::PacketQueue(std::size_t capacity_bytes) : capacity_(round_up(capacity_bytes)) {}

std::size_t PacketQueue::capacity_for(std::size_t bytes) { return round_up(bytes); }

std::size_t PacketQueue::record_bytes(std::uint32_t length) { return round_up(sizeof(Header) + length); }

PacketQueue::Header PacketQueue::header_at(std::size_t offset) const {
  Header header;
  std::memcpy(&header, storage_.get() + offset, sizeof header);
  return header;
}

bool PacketQueue::push(std::int64_t deadline_ns, const unsigned char* packet, std::uint32_t length,
                       std::uint32_t packets) {
  const std::size_t bytes = record_bytes(length);
  if (bytes > capacity_) return false;
  // Allocated by the first packet, so that links nobody uses cost nothing.
  if (!storage_) storage_.reset(new unsigned char[capacity_]);
  if (tail_ + bytes > capacity_) {
    const std::size_t unused_end = capacity_ - tail_;
    if (used_ + unused_end + bytes > capacity_) return false;
    if (unused_end >= sizeof(Header)) {
      const Header marker{0, kWrapMarker, 0};
      std::memcpy(storage_.get() + tail_, &marker, sizeof marker);
    }
    used_ += unused_end;
    tail_ = 0;
  } else if (used_ + bytes > capacity_) {
    return false;
  }
  const Header header{deadline_ns, length, packets};
  std::memcpy(storage_.get() + tail_, &header, sizeof header);
  std::memcpy(storage_.get() + tail_ + sizeof header, packet, length);
  tail_ += bytes;
  used_ += bytes;
  ++records_;
  packets_ += packets;
  return true;
}

std::int64_t PacketQueue::head_deadline() const { return header_at(head_).deadline_ns; }

const unsigned char* PacketQueue::head_data() const { return storage_.get() + head_ + sizeof(Header); }

std::uint32_t PacketQueue::head_length() const { return header_at(head_).length; }

void PacketQueue::pop() {
  const Header head = header_at(head_);
  const std::size_t bytes = record_bytes(head.length);
  head_ += bytes;
  used_ -= bytes;
  packets_ -= head.packets;
  if (--records_ == 0) {
    // Start over at the beginning: an empty ring never needs to wrap.
    head_ = tail_ = used_ = 0;
    return;
  }
  skip_wrap();
}

void PacketQueue::skip_wrap() {
  const std::size_t left = capacity_ - head_;
  if (left < sizeof(Header) || header_at(head_).length == kWrapMarker) {
    used_ -= left;
    head_ = 0;
  }
}

std::size_t PacketQueue::resize(std::size_t capacity_bytes) {
  PacketQueue resized(capacity_bytes);
  std::size_t dropped = 0;
  while (!empty()) {
    const Header head = header_at(head_);
    if (!resized.push(head.deadline_ns, head_data(), head.length, head.packets)) dropped += head.packets;
    pop();
  }
  *this = std::move(resized);
  return dropped;
}

}  // namespace pycomm::netem
