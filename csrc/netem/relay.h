// The packet relay of pycomm.testing.netem: emulated links between network namespaces on a kernel
// without the netem qdisc.
//
// Each peer namespace holds one TUN device; the relay holds the other end of all of them. An IPv4
// packet a peer sends to another peer's address comes out of the sender's device, waits in the
// queue of the link (sender, receiver) for that link's one-way delay, and is written into the
// receiver's device, unless the link's loss draw or its full queue drops it. The rate is not the
// relay's business: a tbf qdisc on each sender's device shapes it before the relay sees a packet.
//
// One forwarding thread per peer device: it reads the packets that peer sends, owns the links
// that leave it (their delay lines, loss draws and counters) and a timerfd armed for the earliest
// packet due on them, and writes due packets into the receivers' devices (a write carries one
// packet, so threads writing into one device do not interleave). Every frame costs a read and a
// write system call, and the receiving namespace's TCP runs inside that write: one thread for all
// devices could not keep up with several peers at 1 Gbit/s, and the kernel dropped what waited in
// the devices' rings. With offload (offload.h) a frame is a TCP super-packet of up to ~45
// packets, each still lost on its own: that took plain TCP over a 2-peer ring at 1 Gbit/s and
// 50 ms on 2 cores from 0.69 to 0.96 of the rate. The calling thread serves the control stream
// (see control.h); a command that touches a link takes its forwarder's lock, which the forwarder
// holds while it works.
//
// Each wakeup drains up to a batch of packets from the device and writes every packet that is due.
// Packets are copied once into their link's ring (packet_queue.h), so nothing is allocated per
// packet; the links' rings are the only memory that grows with traffic, each bounded by its queue
// size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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
  std::uint64_t received_frames = 0;  // reads from the devices: a super-packet is one (offload.h)
  std::uint64_t received_packets = 0;
  std::uint64_t unroutable = 0;  // not IPv4, or to an address no peer holds
};

class Relay {
 public:
  // Creates a TUN device named `device_name` in every peer's namespace. `seed` makes the loss
  // draws repeatable: each link draws from its own generator, so its drops do not depend on the
  // traffic of other links. `offload`: the devices exchange TCP super-packets (offload.h).
  Relay(const std::vector<PeerSpec>& peers, const std::string& device_name, std::uint64_t seed, bool offload);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Forwards packets (one thread per device) and serves `control` on the calling thread until the
  // control stream ends or asks to stop; a forwarder's failure ends it too, rethrown here.
  void run(ControlChannel& control);

  std::size_t peer_count() const { return devices_.size(); }
  // Packets already queued keep their deadline; a smaller queue drops what no longer fits.
  void set_link(std::size_t source, std::size_t destination, const LinkSettings& settings);
  LinkSettings link_settings(std::size_t source, std::size_t destination) const;
  LinkCounters link_counters(std::size_t source, std::size_t destination) const;
  std::size_t link_queued_packets(std::size_t source, std::size_t destination) const;
  RelayCounters counters() const;

 private:
  struct Link;
  struct Forwarder;

  // Checks that the link exists (a control command may name any pair).
  std::size_t link_index(std::size_t source, std::size_t destination) const;
  void forward(Forwarder& forwarder);
  void receive(Forwarder& forwarder, std::int64_t now_ns);
  void route(Forwarder& forwarder, const unsigned char* frame, std::uint32_t length, std::int64_t now_ns);
  void enqueue(Forwarder& forwarder, std::size_t index, std::int64_t deadline_ns, const unsigned char* frame,
               std::uint32_t length, std::uint32_t segments);
  void deliver_due(Forwarder& forwarder, std::int64_t now_ns);
  void arm_timer(Forwarder& forwarder);
  void stop_forwarders();

  bool offload_;
  std::vector<TunDevice> devices_;
  std::unordered_map<std::uint32_t, std::size_t> peer_by_address_;
  std::vector<std::unique_ptr<Link>> links_;  // source * peer_count() + destination
  std::vector<std::unique_ptr<Forwarder>> forwarders_;  // [source]: owns links source -> *
  int stop_fd_ = -1;    // eventfd: readable once the forwarders must stop
  int failed_fd_ = -1;  // eventfd: readable once a forwarder failed
};

// CLOCK_MONOTONIC in nanoseconds, the clock of every deadline in the relay.
std::int64_t monotonic_now_ns();

}  // namespace pycomm::netem
