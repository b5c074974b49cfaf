#include "netem/relay.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "common/error.h"
#include "netem/control.h"
#include "netem/offload.h"

namespace pycomm::netem {
namespace {

// How many packets one wakeup takes from a device before it looks at the others and at the clock:
// large enough to amortise epoll_wait, small enough that one busy sender cannot delay another's
// packets (or due deliveries) by more than a few tens of microseconds.
constexpr int kReceiveBatch = 64;
constexpr int kMaxEvents = 64;
// Larger than any packet a TUN device hands out (its MTU, and an IPv4 super-packet, is at most
// 65535 bytes), and the frame of one with its virtio-net header.
constexpr std::size_t kMaxPacketBytes = 65536;
constexpr std::size_t kMaxFrameBytes = kMaxPacketBytes + kOffloadHeaderBytes;
// A link's queue beyond this is a mistake in the caller's arithmetic, not a plausible router.
constexpr std::size_t kMaxQueueBytes = std::size_t{1} << 30;
// epoll tags of a forwarder's descriptors.
constexpr std::uint32_t kDeviceTag = 0;
constexpr std::uint32_t kTimerTag = 1;
constexpr std::uint32_t kStopTag = 2;

[[noreturn]] void fail_system(const char* what) { PYCOMM_THROW(IoError, what, ": ", std::strerror(errno)); }

// splitmix64: tiny state, good enough statistics for "drop with probability p", and a fixed
// sequence per seed on every platform (std::uniform_real_distribution is not).
class LossDraw {
 public:
  explicit LossDraw(std::uint64_t seed) : state_(seed) {}

  bool drop(double probability) {
    if (probability <= 0) return false;
    const double uniform = static_cast<double>(next() >> 11) * 0x1.0p-53;  // [0, 1)
    return uniform < probability;
  }

 private:
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  std::uint64_t state_;
};

std::uint32_t ipv4_destination(const unsigned char* packet) {
  return (std::uint32_t{packet[16]} << 24) | (std::uint32_t{packet[17]} << 16) | (std::uint32_t{packet[18]} << 8) |
         std::uint32_t{packet[19]};
}

}  // namespace

std::int64_t monotonic_now_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

struct Relay::Link {
  Link(const LinkSettings& link_settings, int receiver_fd, std::uint64_t seed)
      : settings(link_settings), queue(link_settings.queue_bytes), loss_draw(seed), destination_fd(receiver_fd) {}

  LinkSettings settings;
  PacketQueue queue;
  LossDraw loss_draw;
  LinkCounters counters;
  int destination_fd;
  bool busy = false;  // listed in its forwarder's busy_links
};

// The thread of one peer's device and everything only it touches; `mutex` guards all of it (and
// the links it owns) against the control thread.
struct Relay::Forwarder {
  explicit Forwarder(std::size_t peer) : source(peer), receive_buffer(kMaxFrameBytes), run_buffer(kMaxFrameBytes) {}
  ~Forwarder() {
    if (timer_fd >= 0) ::close(timer_fd);
    if (epoll_fd >= 0) ::close(epoll_fd);
  }

  void watch(int fd, std::uint32_t tag) const {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u32 = tag;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0) fail_system("epoll_ctl");
  }

  const std::size_t source;
  int epoll_fd = -1;
  int timer_fd = -1;
  std::int64_t armed_deadline_ns = -1;  // -1: timer disarmed
  std::vector<std::size_t> busy_links;  // its links with packets queued, in no particular order
  std::vector<unsigned char> receive_buffer;
  std::vector<unsigned char> run_buffer;  // the frame of the packets a loss left of a super-packet
  RelayCounters counters;
  mutable std::mutex mutex;
  std::thread thread;
  std::string failure;  // set (under mutex) when the thread ended on an error
};

Relay::Relay(const std::vector<PeerSpec>& peers, const std::string& device_name, std::uint64_t seed, bool offload)
    : offload_(offload) {
  PYCOMM_ENFORCE(peers.size() >= 2, "the relay needs at least 2 peers, got ", peers.size());
  devices_.reserve(peers.size());
  for (const PeerSpec& peer : peers) {
    PYCOMM_ENFORCE(peer_by_address_.emplace(peer.address, devices_.size()).second,
                   "two peers were given the same address");
    devices_.emplace_back(peer.namespace_path, device_name, offload);
  }
  const std::size_t count = peers.size();
  links_.reserve(count * count);
  for (std::size_t source = 0; source < count; ++source) {
    for (std::size_t destination = 0; destination < count; ++destination) {
      const std::uint64_t link_seed = seed ^ ((std::uint64_t{source} << 32 | destination) * 0xd1342543de82ef95ull);
      links_.push_back(std::make_unique<Link>(LinkSettings{}, devices_[destination].fd(), link_seed));
    }
  }
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  failed_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd_ < 0 || failed_fd_ < 0) fail_system("eventfd");
  for (std::size_t source = 0; source < count; ++source) {
    auto forwarder = std::make_unique<Forwarder>(source);
    forwarder->busy_links.reserve(count);
    forwarder->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (forwarder->epoll_fd < 0) fail_system("epoll_create1");
    forwarder->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (forwarder->timer_fd < 0) fail_system("timerfd_create");
    forwarder->watch(forwarder->timer_fd, kTimerTag);
    forwarder->watch(stop_fd_, kStopTag);
    forwarder->watch(devices_[source].fd(), kDeviceTag);
    forwarders_.push_back(std::move(forwarder));
  }
}

Relay::~Relay() {
  stop_forwarders();
  forwarders_.clear();
  if (failed_fd_ >= 0) ::close(failed_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

std::size_t Relay::link_index(std::size_t source, std::size_t destination) const {
  PYCOMM_ENFORCE(source < peer_count() && destination < peer_count() && source != destination, "no link ", source,
                 " -> ", destination, " among ", peer_count(), " peers");
  return source * peer_count() + destination;
}

void Relay::set_link(std::size_t source, std::size_t destination, const LinkSettings& settings) {
  PYCOMM_ENFORCE(settings.delay_ns >= 0, "delay must not be negative, got ", settings.delay_ns, " ns");
  PYCOMM_ENFORCE(settings.loss >= 0 && settings.loss <= 1, "loss must be a probability in [0, 1], got ",
                 settings.loss);
  // At least one record of the largest frame, or frames that large would never fit.
  const std::size_t least = PacketQueue::record_bytes(kMaxFrameBytes);
  PYCOMM_ENFORCE(settings.queue_bytes >= least && settings.queue_bytes <= kMaxQueueBytes, "queue must hold ", least,
                 " to ", kMaxQueueBytes, " bytes, got ", settings.queue_bytes);
  Link& changed = *links_[link_index(source, destination)];
  std::lock_guard<std::mutex> lock(forwarders_[source]->mutex);
  // The capacity is kept rounded up: compare alike, so that changing only the delay or the loss
  // does not copy the queue into a new one.
  if (PacketQueue::capacity_for(settings.queue_bytes) != changed.queue.capacity_bytes()) {
    changed.counters.dropped_queue_full += changed.queue.resize(settings.queue_bytes);
  }
  changed.settings = settings;
}

LinkSettings Relay::link_settings(std::size_t source, std::size_t destination) const {
  const Link& link = *links_[link_index(source, destination)];
  std::lock_guard<std::mutex> lock(forwarders_[source]->mutex);
  return link.settings;
}

LinkCounters Relay::link_counters(std::size_t source, std::size_t destination) const {
  const Link& link = *links_[link_index(source, destination)];
  std::lock_guard<std::mutex> lock(forwarders_[source]->mutex);
  return link.counters;
}

std::size_t Relay::link_queued_packets(std::size_t source, std::size_t destination) const {
  const Link& link = *links_[link_index(source, destination)];
  std::lock_guard<std::mutex> lock(forwarders_[source]->mutex);
  return link.queue.queued_packets();
}

RelayCounters Relay::counters() const {
  RelayCounters totals;
  for (const auto& forwarder : forwarders_) {
    std::lock_guard<std::mutex> lock(forwarder->mutex);
    totals.received_frames += forwarder->counters.received_frames;
    totals.received_packets += forwarder->counters.received_packets;
    totals.unroutable += forwarder->counters.unroutable;
  }
  return totals;
}

void Relay::run(ControlChannel& control) {
  for (const auto& forwarder : forwarders_) {
    Forwarder& mine = *forwarder;
    mine.thread = std::thread([this, &mine] {
      try {
        forward(mine);
      } catch (const std::exception& error) {
        {
          std::lock_guard<std::mutex> lock(mine.mutex);
          mine.failure = error.what();
        }
        const std::uint64_t one = 1;
        [[maybe_unused]] const ssize_t written = write(failed_fd_, &one, sizeof one);
      }
    });
  }
  try {
    pollfd fds[2] = {{control.fd(), POLLIN, 0}, {failed_fd_, POLLIN, 0}};
    while (true) {
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        fail_system("poll");
      }
      if (fds[1].revents != 0) break;
      if (fds[0].revents != 0 && !control.serve(*this)) break;
    }
  } catch (...) {
    stop_forwarders();
    throw;
  }
  stop_forwarders();
  for (const auto& forwarder : forwarders_) {
    std::lock_guard<std::mutex> lock(forwarder->mutex);
    PYCOMM_ENFORCE_TYPE(IoError, forwarder->failure.empty(), "the forwarder of peer ", forwarder->source,
                        " failed: ", forwarder->failure);
  }
}

void Relay::stop_forwarders() {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = write(stop_fd_, &one, sizeof one);
  for (const auto& forwarder : forwarders_) {
    if (forwarder->thread.joinable()) forwarder->thread.join();
  }
}

void Relay::forward(Forwarder& forwarder) {
  epoll_event events[kMaxEvents];
  while (true) {
    const int ready = epoll_wait(forwarder.epoll_fd, events, kMaxEvents, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_system("epoll_wait");
    }
    std::lock_guard<std::mutex> lock(forwarder.mutex);
    for (int index = 0; index < ready; ++index) {
      const std::uint32_t tag = events[index].data.u32;
      if (tag == kStopTag) return;
      if (tag == kTimerTag) {
        std::uint64_t expirations = 0;
        // Only clears the readiness; which packets are due is decided from the clock below.
        if (read(forwarder.timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) {
          fail_system("read(timerfd)");
        }
        forwarder.armed_deadline_ns = -1;
      } else {
        receive(forwarder, monotonic_now_ns());
      }
    }
    deliver_due(forwarder, monotonic_now_ns());
    arm_timer(forwarder);
  }
}

void Relay::receive(Forwarder& forwarder, std::int64_t now_ns) {
  const int fd = devices_[forwarder.source].fd();
  for (int packet = 0; packet < kReceiveBatch; ++packet) {
    const ssize_t length = read(fd, forwarder.receive_buffer.data(), forwarder.receive_buffer.size());
    if (length < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      fail_system("read(TUN device)");
    }
    route(forwarder, forwarder.receive_buffer.data(), static_cast<std::uint32_t>(length), now_ns);
  }
}

void Relay::route(Forwarder& forwarder, const unsigned char* frame, std::uint32_t length, std::int64_t now_ns) {
  // Without offload a frame is one packet; with it, a super-packet stands for several.
  std::optional<OffloadFrame> whole;
  if (offload_) whole.emplace(frame, length);
  const std::uint32_t segments = whole ? whole->segments : 1;
  ++forwarder.counters.received_frames;
  forwarder.counters.received_packets += segments;
  const std::size_t prefix = offload_ ? kOffloadHeaderBytes : 0;
  const unsigned char* packet = frame + prefix;
  // IPv6 neighbour discovery and the like have no place on these links; only IPv4 between peers.
  if (length < prefix + 20 || (packet[0] >> 4) != 4) {
    forwarder.counters.unroutable += segments;
    return;
  }
  const auto found = peer_by_address_.find(ipv4_destination(packet));
  if (found == peer_by_address_.end() || found->second == forwarder.source) {
    forwarder.counters.unroutable += segments;
    return;
  }
  const std::size_t index = forwarder.source * peer_count() + found->second;
  Link& onward = *links_[index];
  const std::int64_t deadline_ns = now_ns + onward.settings.delay_ns;
  // Each packet is lost on its own; the packets between losses leave as one frame each (only a
  // super-packet has more than one, so only a super-packet is ever cut).
  const auto leave = [&](std::uint32_t first, std::uint32_t count) {
    unsigned char* run = forwarder.run_buffer.data();
    enqueue(forwarder, index, deadline_ns, run, whole->build_run(first, count, run), count);
  };
  std::uint32_t run_start = 0;
  for (std::uint32_t segment = 0; segment < segments; ++segment) {
    if (!onward.loss_draw.drop(onward.settings.loss)) continue;
    ++onward.counters.dropped_loss;
    if (segment > run_start) leave(run_start, segment - run_start);
    run_start = segment + 1;
  }
  if (run_start == 0) {
    enqueue(forwarder, index, deadline_ns, frame, length, segments);
  } else if (run_start < segments) {
    leave(run_start, segments - run_start);
  }
}

void Relay::enqueue(Forwarder& forwarder, std::size_t index, std::int64_t deadline_ns, const unsigned char* frame,
                    std::uint32_t length, std::uint32_t segments) {
  Link& onward = *links_[index];
  if (!onward.queue.push(deadline_ns, frame, length, segments)) {
    onward.counters.dropped_queue_full += segments;
    return;
  }
  if (!onward.busy) {
    onward.busy = true;
    forwarder.busy_links.push_back(index);
  }
}

void Relay::deliver_due(Forwarder& forwarder, std::int64_t now_ns) {
  std::vector<std::size_t>& busy_links = forwarder.busy_links;
  for (std::size_t position = 0; position < busy_links.size();) {
    Link& busy = *links_[busy_links[position]];
    PacketQueue& queue = busy.queue;
    while (!queue.empty() && queue.head_deadline() <= now_ns) {
      const std::uint32_t length = queue.head_length();
      std::uint32_t segments = 1;
      std::uint64_t wire_bytes = length;
      if (offload_) {
        const OffloadFrame sent(queue.head_data(), length);
        segments = sent.segments;
        wire_bytes = sent.wire_bytes();
      }
      if (write(busy.destination_fd, queue.head_data(), length) == static_cast<ssize_t>(length)) {
        busy.counters.forwarded_packets += segments;
        busy.counters.forwarded_bytes += wire_bytes;
      } else {
        busy.counters.dropped_write += segments;
      }
      queue.pop();
    }
    if (queue.empty()) {
      busy.busy = false;
      busy_links[position] = busy_links.back();
      busy_links.pop_back();
    } else {
      ++position;
    }
  }
}

void Relay::arm_timer(Forwarder& forwarder) {
  std::int64_t earliest = -1;
  for (const std::size_t index : forwarder.busy_links) {
    const std::int64_t deadline = links_[index]->queue.head_deadline();
    if (earliest < 0 || deadline < earliest) earliest = deadline;
  }
  if (earliest == forwarder.armed_deadline_ns) return;
  itimerspec when{};  // all zero: disarm
  if (earliest >= 0) {
    when.it_value.tv_sec = earliest / 1'000'000'000;
    when.it_value.tv_nsec = earliest % 1'000'000'000;
  }
  if (timerfd_settime(forwarder.timer_fd, TFD_TIMER_ABSTIME, &when, nullptr) != 0) fail_system("timerfd_settime");
  forwarder.armed_deadline_ns = earliest;
}

}  // namespace pycomm::netem
