// The packet relay of pycomm.testing.netem: emulated links between network namespaces on a kernel
// without the netem qdisc.
//
// Each peer namespace holds one TUN device; the relay holds the other end of all of them. An IPv4
// packet a peer sends to another peer's address comes out of the sender's device, waits in the
// queue of the link (sender, receiver) for that link's one-way delay, and is written into the
// receiver's device, unless the link's loss draw or its full queue drops it. The rate is not the
// relay's business: a tbf qdisc on each sender's device shapes it before the relay sees a packet.
//
// One thread, one epoll loop: devices, a timerfd armed for the earliest packet due, and the control
// stream (see control.h). Each wakeup drains up to a batch of packets per device and writes every
// packet that is due. Packets are copied once into their link's ring (packet_queue.h), so nothing is
// allocated per packet; the links' rings are the only memory that grows with traffic, each bounded
// by its queue size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "netem/packet_queue.h"
#include "netem/tun_device.h"

namespace pycomm::netem {

class ControlChannel;

struct PeerSpec {
  std::string namespace_path;  // a bound network namespace, e.g. /run/netns/NAME
  std::uint32_t address = 0;   // the peer's IPv4 address, host byte order
};

struct LinkSettings {
  std::int64_t delay_ns = 0;           // one way
  double loss = 0;                     // probability that a packet is dropped, in [0, 1]
  std::size_t queue_bytes = 4u << 20;  // packets on the wire plus what waits to get on it
};

struct LinkCounters {
  std::uint64_t forwarded_packets = 0;
  std::uint64_t forwarded_bytes = 0;
  std::uint64_t dropped_loss = 0;
  std::uint64_t dropped_queue_full = 0;
  std::uint64_t dropped_write = 0;  // the receiving device refused the packet
};

// Counters for packets that belong to no link.
struct RelayCounters {
  std::uint64_t received_packets = 0;
  std::uint64_t unroutable = 0;  // not IPv4, or to an address no peer holds
};

class Relay {
 public:
  // Creates a TUN device named `device_name` in every peer's namespace. `seed` makes the loss
  // draws repeatable: each link draws from its own generator, so its drops do not depend on the
  // traffic of other links.
  Relay(const std::vector<PeerSpec>& peers, const std::string& device_name, std::uint64_t seed);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Forwards packets and serves `control` until the control stream ends or asks to stop.
  void run(ControlChannel& control);

  std::size_t peer_count() const { return devices_.size(); }
  // Packets already queued keep their deadline; a smaller queue drops what no longer fits.
  void set_link(std::size_t source, std::size_t destination, const LinkSettings& settings);
  const LinkSettings& link_settings(std::size_t source, std::size_t destination) const;
  const LinkCounters& link_counters(std::size_t source, std::size_t destination) const;
  std::size_t link_queued_packets(std::size_t source, std::size_t destination) const;
  const RelayCounters& counters() const { return counters_; }

 private:
  struct Link;

  // Checks that the link exists (a control command may name any pair).
  std::size_t link_index(std::size_t source, std::size_t destination) const;
  Link& link(std::size_t source, std::size_t destination);
  const Link& link(std::size_t source, std::size_t destination) const;
  void receive_from(std::size_t source, std::int64_t now_ns);
  void route(std::size_t source, const unsigned char* packet, std::uint32_t length, std::int64_t now_ns);
  void deliver_due(std::int64_t now_ns);
  void arm_timer();
  void watch(int fd, std::uint32_t tag);

  std::vector<TunDevice> devices_;
  std::unordered_map<std::uint32_t, std::size_t> peer_by_address_;
  std::vector<std::unique_ptr<Link>> links_;  // source * peer_count() + destination
  std::vector<std::size_t> busy_links_;       // links with packets queued, in no particular order
  std::vector<unsigned char> receive_buffer_;
  RelayCounters counters_;
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  std::int64_t armed_deadline_ns_ = -1;  // -1: timer disarmed
};

// CLOCK_MONOTONIC in nanoseconds, the clock of every deadline in the relay.
std::int64_t monotonic_now_ns();

}  // namespace pycomm::netem
